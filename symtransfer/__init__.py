"""symtransfer: theory and simulation of transfer learning in infinitely wide feature-learning networks."""

from . import protocol
from .advisor import Advice, advise
from .base import TransferEstimator
from .activations import (Activation, GaussianEquivalence, available_activations, get_activation, leaky_relu,
                          register_activation)
from .errors import (ConvergenceError, ConvergenceWarning, DivergenceError, EdgeOfNormalisabilityError,
                     MalformedRowWarning, NoSaddlePointError, ResultsDatabaseError, StepSizeWarning, StepTooLargeError,
                     SymtransferError)
from .datasets import TransferData, digits_transfer, load_task, load_transfer_data
from .experiments import TransferTable, compare_transfer, kernel_alignment
from .protocol import run_protocols
from .figures import ExperimentRun, run_experiment
from .report import write_report
from .sim import WideNetwork
from .sweep import SweepReport, load_results, run_points, run_sweep
from .symbolic import DMFTSystem, SaddlePointSystem, derive
from .tasks import HermiteTeacher, Task, TransferPair, make_task, make_transfer_pair
from .theory.adaptive import AdaptiveKernel, AdaptiveTransfer
from .theory import gradient_flow
from .theory.dmft import GradientFlowDMFT, StepSizeError
from .theory.gradient_flow import (finetune_error, optimal_source_strength, rich_limit_error, scratch_error,
                                   source_kernel, source_spike)
from .theory.linear import LinearTheory, LinearTransferTheory
from .theory.proportional import (LearningCurves, PhaseDiagram, SourceState, learning_curves, phase_diagram, source_state,
                                  target_error, transfer_gain)

__version__ = "0.1.0"

__all__ = [
    "TransferEstimator",
    "protocol",
    "run_protocols",
    "advise",
    "Advice",
    "write_report",
    "Activation",
    "available_activations",
    "get_activation",
    "register_activation",
    "leaky_relu",
    "GaussianEquivalence",
    "ConvergenceError",
    "ConvergenceWarning",
    "EdgeOfNormalisabilityError",
    "DivergenceError",
    "NoSaddlePointError",
    "ResultsDatabaseError",
    "MalformedRowWarning",
    "StepSizeWarning",
    "StepTooLargeError",
    "SymtransferError",
    "WideNetwork",
    "AdaptiveKernel",
    "AdaptiveTransfer",
    "GradientFlowDMFT",
    "StepSizeError",
    "gradient_flow",
    "source_spike",
    "source_kernel",
    "finetune_error",
    "scratch_error",
    "rich_limit_error",
    "optimal_source_strength",
    "compare_transfer",
    "TransferTable",
    "run_experiment",
    "ExperimentRun",
    "kernel_alignment",
    "SaddlePointSystem",
    "DMFTSystem",
    "TransferData",
    "digits_transfer",
    "load_task",
    "load_transfer_data",
    "run_sweep",
    "run_points",
    "load_results",
    "SweepReport",
    "derive",
    "HermiteTeacher",
    "Task",
    "TransferPair",
    "make_task",
    "make_transfer_pair",
    "LinearTheory",
    "LinearTransferTheory",
    "target_error",
    "transfer_gain",
    "source_state",
    "SourceState",
    "phase_diagram",
    "PhaseDiagram",
    "learning_curves",
    "LearningCurves",
]
