from lmrlgym.cli import main

main()
