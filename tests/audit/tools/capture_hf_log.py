"""Record one real multi-model TORCH_TRACE log: tiny randomly initialised transformers models
(no weights downloaded) compiled with `dynamic=True`, `torch._dynamo.reset()` between models so
compile ids restart at 0/0 - what a notebook or a test suite that compiles several models
writes into one log.

    TORCH_TRACE=/tmp/hf_trace python tests/audit/tools/capture_hf_log.py [inductor|aot_eager]

The parser benchmark (`python -m tools.audit_bench LOG`) and the token-source tests
(tests/audit/test_hf_logs.py, data/hf-*.log.gz) use its output. CPU only.
"""

import sys

import torch
import transformers as tf

MODELS = {  # name -> (config class, model class, extra config); all tiny
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, {}),
    "gpt2": (
        tf.GPT2Config,
        tf.GPT2LMHeadModel,
        {"n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 128, "n_positions": 256},
    ),
    "bert": (tf.BertConfig, tf.BertModel, {}),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, {}),
    "mistral": (tf.MistralConfig, tf.MistralForCausalLM, {}),
}
SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
    "max_position_embeddings": 256,
}


def main() -> None:
    backend = sys.argv[1] if len(sys.argv) > 1 else "inductor"
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else list(MODELS)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    for name in names:
        cfg_cls, model_cls, extra = MODELS[name]
        kwargs = extra or {
            k: v for k, v in SMALL.items() if k != "num_key_value_heads" or name != "bert"
        }
        model = model_cls(cfg_cls(**kwargs)).eval()
        compiled = torch.compile(model, backend=backend, dynamic=True)
        with torch.no_grad():
            for seq in (8, 24):
                compiled(input_ids=torch.randint(0, 128, (1, seq)))
        torch._dynamo.reset()
        print(f"{name}: compiled", flush=True)


if __name__ == "__main__":
    main()
