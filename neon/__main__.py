"""`python -m neon` is the same application as the `neon` command."""

from neon.launch.cli import main

if __name__ == "__main__":
    main()
