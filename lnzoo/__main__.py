from lnzoo.cli import main

main()
