"""What a fit is worth: log p(x) by importance sampling (:mod:`~pyro_vae.evaluation.importance`,
its estimates and PSIS in :mod:`~pyro_vae.evaluation.estimates`), AIS and BDMC
(:mod:`~pyro_vae.evaluation.annealing`, :mod:`~pyro_vae.evaluation.bounds`), the entries of a
run's ``evaluation.json`` (:mod:`~pyro_vae.evaluation.records`), classification reports for
stories with a label site (:mod:`~pyro_vae.evaluation.classify`) and their figures.
"""

from pyro_vae.evaluation.annealing import STARTS, Adaptation, AISConfig, sigmoid_schedule
from pyro_vae.evaluation.bounds import (
                                        AISResult,
                                        BDMCResult,
                                        ais,
                                        ais_curve,
                                        ais_plan,
                                        bdmc,
                                        check_ais,
                                        default_steps_grid,
                                        describe_ais_plan,
                                        simulate,
)
from pyro_vae.evaluation.chunks import ChunkPlan, plan_chunks, probe_cell_bytes
from pyro_vae.evaluation.classify import (
                                        accuracy,
                                        classifier_figures,
                                        epoch_metrics,
                                        keep_labels,
                                        label_probs,
                                        label_site,
                                        partly_labelled,
                                        scored_splits,
                                        write_classifier_report,
)
from pyro_vae.evaluation.estimates import (
                                        ESTIMATORS,
                                        KHAT_THRESHOLD,
                                        Estimate,
                                        Evaluation,
                                        KCurve,
                                        PSISDiagnostics,
                                        bits_per_dim,
                                        k_grid,
                                        psis_diagnostics,
)
from pyro_vae.evaluation.figures import plot_k_curve, plot_khat
from pyro_vae.evaluation.importance import (
                                        default_chunks,
                                        evaluate,
                                        evaluation_plan,
                                        images_bar,
                                        log_importance_weights,
                                        particle_traces,
                                        running_weights,
)
from pyro_vae.evaluation.records import (
                                        EVALUATION_FILE,
                                        entry_key,
                                        evaluation_entries,
                                        make_entry,
                                        read_evaluations,
                                        record_entries,
)
from pyro_vae.evaluation.running import RunningWeights

__all__ = [
    "accuracy",
    "Adaptation",
    "ais",
    "ais_curve",
    "ais_plan",
    "AISConfig",
    "AISResult",
    "bdmc",
    "BDMCResult",
    "bits_per_dim",
    "check_ais",
    "ChunkPlan",
    "classifier_figures",
    "default_chunks",
    "default_steps_grid",
    "describe_ais_plan",
    "entry_key",
    "epoch_metrics",
    "Estimate",
    "ESTIMATORS",
    "evaluate",
    "evaluation_entries",
    "evaluation_plan",
    "Evaluation",
    "EVALUATION_FILE",
    "images_bar",
    "k_grid",
    "KCurve",
    "keep_labels",
    "KHAT_THRESHOLD",
    "label_probs",
    "label_site",
    "log_importance_weights",
    "make_entry",
    "particle_traces",
    "partly_labelled",
    "plot_k_curve",
    "plan_chunks",
    "plot_khat",
    "probe_cell_bytes",
    "psis_diagnostics",
    "PSISDiagnostics",
    "read_evaluations",
    "record_entries",
    "running_weights",
    "RunningWeights",
    "scored_splits",
    "sigmoid_schedule",
    "simulate",
    "STARTS",
    "write_classifier_report",
]
