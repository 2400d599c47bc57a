"""Figures, one module per family; ``draw`` draws a results directory's figures of one kind
(``KINDS``: each family module registers the kinds it draws)."""
# the kind modules in the order --kind lists them (importing one registers its kind)
from .transfer import lr_curves, transfer_plot
from .curves import COLOR_BY, loss_vs_step, training_curves
from .diagnostics import QUANTITIES, diagnostics_plot
from .regimes import REGIME_COLORS, regime_plot
from .lrwd import curves_by_lrwd, lrwd_heatmap
from .compare import compare_curves
from .kinds import KINDS, draw
from .runs import select, single_scale
from .style import Style, check_out, save

__all__ = ["KINDS", "COLOR_BY", "QUANTITIES", "REGIME_COLORS", "Style", "check_out",
           "compare_curves", "curves_by_lrwd", "diagnostics_plot", "draw", "loss_vs_step", "lr_curves",
           "lrwd_heatmap", "regime_plot", "save", "select", "single_scale", "training_curves", "transfer_plot"]
