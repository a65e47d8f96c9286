from imgscan.cli import main

main()
