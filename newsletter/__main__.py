from newsletter.cli import main

main(prog_name="newsletter")
