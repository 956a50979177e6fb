"""The file MLflow runs to build a registered version's pyfunc ("models from code"), when it loads or serves one.

Nothing in continual-opd imports it: `served_model.log_served_model` names it as the model's code, so a
version carries no pickled Python object, only this file, the package (`code_paths`) and its folder.
"""

from continual_opd.served_model import set_served_model

set_served_model()
