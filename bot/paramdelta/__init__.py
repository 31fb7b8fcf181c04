"""paramdelta-bot: transfer post-training onto a new base model with the ParamΔ merge."""

__version__ = "0.1.0"
PROJECT_URL = "https://github.com/paramdelta-bot/paramdelta-bot"
