"""`python -m prompt_tuning.sweep`: pt-sweep (and `pt-sweep report`)."""
from prompt_tuning.sweep import main

if __name__ == "__main__":
  main.console_main()
