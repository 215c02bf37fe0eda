"""`python -m ecacli` runs the command line."""

from ecacli.cli import main

if __name__ == "__main__":
    main()
