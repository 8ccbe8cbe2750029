from shared.cli.commands import main

main()
