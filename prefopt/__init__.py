"""prefopt: preference optimisation for language models.

Public entry points: `register_loss` (add a loss), `load_recipe` (validated config),
`train` (run a recipe). Heavy libraries (torch, transformers) load only when training starts.
"""

from prefopt.registry import LOSSES, register_loss

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: `import prefopt` must stay cheap for the CLI's validation
    if name == "load_recipe":
        from prefopt.config import load_recipe

        return load_recipe
    if name == "train":
        from prefopt.train import train

        return train
    raise AttributeError(name)


__all__ = ["LOSSES", "register_loss", "load_recipe", "train", "__version__"]
