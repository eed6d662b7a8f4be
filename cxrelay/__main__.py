from cxrelay.cli import main

main()
