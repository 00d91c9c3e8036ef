"""The Hessian panel: top eigenvalues, trace and eigenvalue density of the loss Hessian.

For each chosen variant (PyHessian, Yao et al. 2020; Ghorbani et al. 2019): the ``k`` dominant
eigenvalues by power iteration, the trace by Hutchinson's estimator, and the spectral density by
stochastic Lanczos quadrature, over the whole model, one layer, or every layer separately. With
*pruned subspace* on, a pruned variant's Hessian is restricted to its surviving weights
(``P H P``), the curvature the pruned network actually has.

Examples
--------
>>> import workbench
>>> session = workbench.Session.default(progress=False)
>>> panel = HessianPanel.from_session(session, k=2, iters=5, trace_samples=3, density_iters=5,
...                                   samples=32)
>>> sorted(panel.run_now())
[('density', 'base'), ('eigen', 'base'), ('trace', 'base')]
>>> fig = panel.figures()["eigenvalues"]
>>> fig.data[0].y.tolist() == panel.results[("eigen", "base")].values.tolist()
True
"""

from __future__ import annotations

import panel as pn
import param

from workbench.analysis import density, top_eigenvalues, trace
from workbench.errors import ParameterError
from workbench.panels.analysis_base import AnalysisPanel, Job
from workbench.panels.export import plotly_pane
from workbench.plots.hessian import density_figure, eigenvalues_figure, trace_figure

WHOLE = "whole model"
PER_LAYER = "every layer"
#: Most Hessian-vector products (per variant) one run may ask for.
MAX_PRODUCTS = 20000


def parameter_modules(model) -> list[str]:
    """Names of the modules that own parameters directly, in model order.

    Examples
    --------
    >>> import torch
    >>> parameter_modules(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(),
    ...                                       torch.nn.Linear(3, 1)))
    ['0', '2']
    """
    return list(dict.fromkeys(n.rsplit(".", 1)[0] for n, _ in model.named_parameters()
                              if "." in n))


class HessianPanel(AnalysisPanel):
    """Top eigenvalues, trace and spectral density of the Hessian of several variants."""

    title = "Hessian spectrum"
    intro = ("Choose variants and press **Run**: top eigenvalues (power iteration), trace "
             "(Hutchinson) and eigenvalue density (stochastic Lanczos) on 128 test samples take "
             "a few seconds per variant.")

    k = param.Integer(default=3, bounds=(1, 100), softbounds=(1, 10), label="Top eigenvalues k")
    iters = param.Integer(default=20, bounds=(1, 1000), softbounds=(5, 200),
                          label="Power iterations", doc="Hessian-vector products per eigenvalue.")
    tol = param.Number(default=1e-3, bounds=(1e-8, 1.0), label="Tolerance",
                       doc="Relative change that stops the power iteration.")
    layer = param.Selector(default=WHOLE, objects=[WHOLE, PER_LAYER], check_on_set=False,
                           label="Parameters",
                           doc="The whole model, every layer separately, or one layer.")
    samples = param.Integer(default=128, bounds=(1, None),
                            doc="Test samples the loss is averaged over (class-stratified).")
    trace_samples = param.Integer(default=20, bounds=(0, 10000), softbounds=(0, 200),
                                  label="Trace samples", doc="Rademacher vectors (0: no trace).")
    density = param.Boolean(default=True, label="Spectral density")
    density_iters = param.Integer(default=30, bounds=(2, 1000), softbounds=(5, 200),
                                  label="Lanczos steps")
    masked = param.Boolean(default=True, label="Pruned subspace",
                           doc="Restrict a pruned variant's Hessian to its surviving weights.")
    seed = param.Integer(default=0, bounds=(0, None))

    def __init__(self, **params):
        super().__init__(**params)
        self._sync_layers()

    @param.depends("state.revision", watch=True)
    def _sync_layers(self):
        layers = parameter_modules(self.state.session.base.model)
        value = self.layer
        self.param.layer.objects = [WHOLE, PER_LAYER, *layers]
        self.layer = value

    # --- plan -------------------------------------------------------------------------------
    def plan(self) -> list[Job]:
        if not isinstance(self.layer, str) or not self.layer:
            raise ParameterError(f"layer must be {WHOLE!r}, {PER_LAYER!r} or a layer name, got "
                                 f"{self.layer!r}")
        k, iters, tol, seed = int(self.k), int(self.iters), float(self.tol), int(self.seed)
        n_trace, n_lanczos = int(self.trace_samples), int(self.density_iters)
        products = k * iters + n_trace + (n_lanczos if self.density else 0)
        if products > MAX_PRODUCTS:
            raise ParameterError(f"these settings need up to {products:,} Hessian-vector "
                                 f"products per variant, more than {MAX_PRODUCTS:,}; lower k, "
                                 "iterations, trace samples or Lanczos steps")
        jobs = []
        for name in self.variants:
            v = self.state.variant(name)
            n = min(int(self.samples), len(v.data.y_test))
            x, y = self.test_subset(name, n)
            masks = None if self.masked else {}
            vkey = (self.variant_key(name), n, bool(self.masked and v.masks), seed)
            if self.layer == PER_LAYER:
                layers = parameter_modules(v.model)
            else:
                layers = [None if self.layer == WHOLE else self.layer]
            for layer in layers:
                suffix = "" if layer is None else f" of {layer}"
                name_key = name if self.layer != PER_LAYER else (name, layer)
                jobs.append(Job(
                    ("eigen", name_key), ("eigen", vkey, layer, k, iters, tol),
                    f"top eigenvalues of {name}{suffix}",
                    lambda done, v=v, x=x, y=y, layer=layer, masks=masks: top_eigenvalues(
                        v, x, y, k=k, iters=iters, tol=tol, seed=seed, layer=layer, masks=masks,
                        progress=False)))
                if n_trace:
                    jobs.append(Job(
                        ("trace", name_key), ("trace", vkey, layer, n_trace),
                        f"trace of {name}{suffix}",
                        lambda done, v=v, x=x, y=y, layer=layer, masks=masks: trace(
                            v, x, y, samples=n_trace, seed=seed, layer=layer, masks=masks,
                            progress=False)))
            if self.density:
                layer = None if self.layer in (WHOLE, PER_LAYER) else self.layer
                jobs.append(Job(
                    ("density", name), ("density", vkey, layer, n_lanczos),
                    f"density of {name}",
                    lambda done, v=v, x=x, y=y, layer=layer, masks=masks: density(
                        v, x, y, iters=n_lanczos, seed=seed, layer=layer, masks=masks,
                        bins=2000, progress=False)))
        return jobs

    # --- figures (derivations) ----------------------------------------------------------------
    def _collect(self, kind: str) -> dict:
        out: dict = {}
        for key, r in self.results.items():
            if key[0] != kind:
                continue
            if isinstance(key[1], tuple):  # per layer: (variant, layer)
                out.setdefault(key[1][0], {})[key[1][1]] = r
            else:
                out[key[1]] = r
        return out

    @param.depends("results")
    def figures(self) -> dict:
        """``"eigenvalues"``, ``"trace"``, ``"density"`` → plotly figure (those computed)."""
        figs = {}
        eig, tr, dens = self._collect("eigen"), self._collect("trace"), self._collect("density")
        if eig:
            figs["eigenvalues"] = eigenvalues_figure(eig)
        if tr:
            figs["trace"] = trace_figure(tr)
        if dens:
            figs["density"] = density_figure(dens)
        return figs

    @param.depends("results")
    def summary(self) -> str:
        """A markdown table of the numbers behind the figures."""
        eig, tr = self._collect("eigen"), self._collect("trace")
        rows = []
        for name in dict.fromkeys([*eig, *tr]):
            e, t = eig.get(name), tr.get(name)
            if isinstance(e, dict) or isinstance(t, dict):
                for layer in dict.fromkeys([*(e or {}), *(t or {})]):
                    rows.append(self._row(f"{name} · {layer}", (e or {}).get(layer),
                                          (t or {}).get(layer)))
            else:
                rows.append(self._row(name, e, t))
        if not rows:
            return ""
        return "\n".join(["| | λ1 | converged | trace | free weights |", "|---|---|---|---|---|",
                          *rows])

    @staticmethod
    def _row(label, e, t) -> str:
        lam = f"{e.values[0]:.4g}" if e is not None else ""
        conv = ("yes" if all(e.meta["converged"]) else "no") if e is not None else ""
        tr = f"{t.mean:.4g} ± {t.stderr:.2g}" if t is not None else ""
        dim = (e if e is not None else t).meta.get("dim")
        return f"| {label} | {lam} | {conv} | {tr} | {'' if dim is None else f'{dim:,}'} |"

    # --- view -----------------------------------------------------------------------------------
    def controls(self) -> list:
        w = pn.widgets
        return [
            w.Select.from_param(self.param.layer),
            w.IntSlider.from_param(self.param.k),
            w.IntSlider.from_param(self.param.iters),
            w.IntSlider.from_param(self.param.trace_samples),
            pn.Row(w.Checkbox.from_param(self.param.density),
                   w.Checkbox.from_param(self.param.masked)),
            w.IntSlider.from_param(self.param.density_iters, visible=self.param.density),
            w.IntInput.from_param(self.param.samples),
            w.IntInput.from_param(self.param.seed),
        ]

    @param.depends("results")
    def outputs(self):
        figs = self.figures()
        panes = [plotly_pane(f, f"hessian-{key}", sizing_mode="stretch_width",
                             height=f.layout.height or 400)
                 for key, f in figs.items()]
        return pn.Column(pn.GridBox(*panes, ncols=2 if len(panes) > 1 else 1,
                                    sizing_mode="stretch_width"),
                         pn.pane.Markdown(self.summary()), sizing_mode="stretch_width")


__all__ = ["HessianPanel", "parameter_modules", "WHOLE", "PER_LAYER"]
