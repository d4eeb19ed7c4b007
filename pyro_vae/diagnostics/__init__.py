"""Should this fit be trusted? NUTS against the guide (:mod:`~pyro_vae.diagnostics.nuts`,
:mod:`~pyro_vae.diagnostics.posteriors`), the inference gaps, posterior collapse, predictive
checks, the ArviZ export, the driver (:mod:`~pyro_vae.diagnostics.suite`) and its HTML report.
"""

from pyro_vae.diagnostics.collapse import (
                                           Collapse,
                                           SiteCollapse,
                                           kl_per_dimension,
                                           kl_total,
                                           posterior_collapse,
)
from pyro_vae.diagnostics.config import (
    ACTIVE_THRESHOLD,
    MIN_DRAWS,
    RHAT_OK,
    DiagnoseConfig,
    check_diagnose_config,
)
from pyro_vae.diagnostics.gaps import Gaps, inference_gaps
from pyro_vae.diagnostics.idata import inference_data
from pyro_vae.diagnostics.nuts import Convergence, NutsResult, convergence, run_nuts
from pyro_vae.diagnostics.posteriors import (
                                           JointGuide,
                                           LocalGaussian,
                                           PosteriorProposal,
                                           fit_local,
                                           local_start,
)
from pyro_vae.diagnostics.ppc import PredictiveCheck, predictive_check
from pyro_vae.diagnostics.report import active_units_text, verdicts, write_diagnostics
from pyro_vae.diagnostics.suite import Diagnostics, diagnose, select_points

__all__ = [
    "ACTIVE_THRESHOLD",
    "active_units_text",
    "Collapse",
    "Convergence",
    "convergence",
    "diagnose",
    "DiagnoseConfig",
    "MIN_DRAWS",
    "check_diagnose_config",
    "Diagnostics",
    "fit_local",
    "Gaps",
    "inference_data",
    "inference_gaps",
    "JointGuide",
    "kl_per_dimension",
    "kl_total",
    "local_start",
    "LocalGaussian",
    "NutsResult",
    "posterior_collapse",
    "PosteriorProposal",
    "predictive_check",
    "PredictiveCheck",
    "RHAT_OK",
    "run_nuts",
    "select_points",
    "SiteCollapse",
    "verdicts",
    "write_diagnostics",
]
