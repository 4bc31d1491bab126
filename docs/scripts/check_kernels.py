"""Chapter 7's checks against central finite differences, float64: a linear layer with each
activation, the Bernoulli likelihood, and the whole model's loss with respect to every parameter."""
import numpy as np

import scratchvae as sv
from scratchvae.kernels import reference as K
from scratchvae.model import layers

rng = np.random.default_rng(0)
x = rng.standard_normal((6, 5))
W, b = rng.standard_normal((5, 4)), rng.standard_normal(4)


def linear(activation):
    """The layer as check_op wants it: forward(**inputs) -> (y, cache), backward(cache, d_y) -> grads."""
    def forward(x, W, b):
        return layers.linear_forward(x, W, b, activation)

    def backward(cache, d_y):
        d_x, d = layers.linear_backward(cache, d_y.copy())
        return {"x": d_x, "W": d["W"], "b": d["b"]}
    return forward, backward


def show(what, report):
    print(f"{what:28s} {'ok' if report.ok else 'FAILED'}  worst relative error {report.max_rel_error:.1e}")
    assert report.ok


for activation in ("relu", "tanh", "sigmoid", "softplus", "elu"):
    show(f"linear layer, {activation}", sv.check_op(*linear(activation), {"x": x.copy(), "W": W.copy(), "b": b.copy()}))

target = rng.random((6, 7))
show("Bernoulli -log p(x | l)", sv.check_op(
    lambda logits: (K.bernoulli_nll(logits, target)[0], logits),
    lambda logits, d_nll: {"logits": d_nll[:, None] * K.bernoulli_nll(logits, target)[1]},
    {"logits": rng.standard_normal((6, 7))}))

model = sv.VAE(7, [5], 2, dtype=np.float64, seed=0)
batch, eps = rng.random((4, 7)), rng.standard_normal((4, 2))
grads = {k: g.copy() for k, g in model.loss_and_grads(batch, eps=eps)[1].items()}
show("the whole VAE, every weight", sv.gradcheck(lambda: model.loss(batch, eps=eps)["total"], model.params, grads))
