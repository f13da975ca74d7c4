from ddcli.cli import main

main()
