"""prefopt: preference optimisation for language models.

Public entry points: `register_loss` (add a loss), `load_recipe` (validated config),
`load_pipeline` (a staged recipe, every stage validated), `train` (run either). Heavy
libraries (torch, transformers) load only when training starts.
"""

import sys
import types

from prefopt.registry import LOSSES, register_loss

__version__ = "0.1.0"


class _Package(types.ModuleType):
    """`prefopt.train` is the function, always. Importing the submodule `prefopt.train` makes
    the import system set the package attribute `train` to that module, which would replace the
    function after its first use (`'module' object is not callable`); this data descriptor
    takes precedence over that assignment."""

    @property
    def train(self):  # type: ignore[override]
        from prefopt.pipeline.run import train

        return train

    @train.setter
    def train(self, value) -> None:  # the import system's setattr of the submodule: ignored
        pass


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):  # lazy: `import prefopt` must stay cheap for the CLI's validation
    if name == "load_recipe":
        from prefopt.config import load_recipe

        return load_recipe
    if name == "load_pipeline":
        from prefopt.pipeline.stages import load_pipeline

        return load_pipeline
    raise AttributeError(name)


__all__ = ["LOSSES", "register_loss", "load_recipe", "load_pipeline", "train", "__version__"]
