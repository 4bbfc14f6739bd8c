"""Parameters shared by the built-in builders."""

from skipbench import Param
from skipbench.inits import ACTIVATIONS
from skipbench.specs import INITS


def base_params(init: str = "he-normal") -> tuple[Param, ...]:
    """activation, bias and init: the parameters every built-in builder declares."""
    return (
        Param("activation", "str", "relu", ACTIVATIONS, "nonlinearity on the main path"),
        Param("bias", "bool", True, help="whether layers have a bias (initialized to zero)"),
        Param("init", "str", init, INITS, "weight initialization of the main path"),
    )
