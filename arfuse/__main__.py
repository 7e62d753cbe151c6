from arfuse.cli import main

main()
