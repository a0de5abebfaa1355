from edgistry.cli import main

main()
