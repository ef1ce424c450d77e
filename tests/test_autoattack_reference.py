"""APGD-CE and APGD-T against the reference ``pyautoattack`` 0.2.0 on the same small CNN and points.

A PyTorch CNN with fixed random weights is converted to a JAX function (logits equal to 1e-4);
both AutoAttack drivers then run ``version="custom", attacks=["apgd-ce", "apgd-t"]`` (APGD-CE with
the constructor's 5 restarts, APGD-T with 9 target classes) on the same 200 random 16x16 images.

Tolerance. The two implementations differ only in their random starts (torch vs jax.random). On this
model (single APGD runs, 200 points, seeds 0-3, l_inf 1/255 and 2/255, l_2 0.05 and 0.15), the
reference's robust accuracy varied across seeds by at most 0.5 points (1 image) and the JAX port
was within 1 point (2 images) of the reference at every seed. We allow 2 percentage points
(4 images) per attack, and ask that at least 95% of the points get the same verdict from both.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

try:
  import torch
  import torch.nn as nn
  from pyautoattack import AutoAttack
  HAVE_REFERENCE = True
except ImportError:
  HAVE_REFERENCE = False

from saat_jax.autoattack import autoattack
from saat_jax.testing.autoattack_reference import run_reference

pytestmark = [
    pytest.mark.torch,
    pytest.mark.skipif(not HAVE_REFERENCE, reason="needs torch and the reference pyautoattack==0.2.0: "
                       "pip install torch==2.13.0 && pip install -e '.[torch]'"),
]

N, H, N_CLASSES = 200, 16, 10
TOL = 0.02


def torch_cnn():
  torch.manual_seed(0)
  return nn.Sequential(
      nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
      nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
      nn.Flatten(),
      nn.Linear(32 * (H // 2) ** 2, 64), nn.ReLU(),
      nn.Linear(64, N_CLASSES),
  ).eval()


def to_jax(net):
  """The same network as a pure JAX function on NHWC inputs."""
  sd = {k: jnp.asarray(v.detach().cpu().numpy()) for k, v in net.state_dict().items()}
  # OIHW -> HWIO
  w0, w2 = jnp.transpose(sd["0.weight"], (2, 3, 1, 0)), jnp.transpose(sd["2.weight"], (2, 3, 1, 0))

  def conv(x, w, b, stride):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + b

  def logits_fn(x):
    h = jax.nn.relu(conv(x, w0, sd["0.bias"], 1))
    h = jax.nn.relu(conv(h, w2, sd["2.bias"], 2))
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)  # torch flattens C, H, W
    h = jax.nn.relu(h @ sd["5.weight"].T + sd["5.bias"])
    return h @ sd["7.weight"].T + sd["7.bias"]

  return logits_fn


@pytest.fixture(scope="module")
def problem():
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # 2 threads slow torch down badly on a shared 2-core machine
  net = torch_cnn()
  logits_fn = to_jax(net)
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(N, H, H, 3)).astype(np.float32)
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  with torch.no_grad():
    ref_logits = net(xt).numpy()
  y = ref_logits.argmax(1).astype(np.int64)
  y[::10] = (y[::10] + 1) % N_CLASSES  # 10% clean mistakes
  yield net, logits_fn, x, xt, y, ref_logits
  torch.set_num_threads(threads)


def reference_autoattack(net, xt, y, *, eps, norm):
  """pyautoattack's run; the per-attack robust accuracies are read off its log."""
  adversary = AutoAttack(net, norm=norm, eps=eps, version="custom", attacks=["apgd-ce", "apgd-t"], seed=0)
  ref = run_reference(adversary, xt, torch.from_numpy(y), batch_size=N)
  return ref["robust_accuracy"], ref["robust"], ref["x_adv"]


def test_converted_logits_agree(problem):
  _, logits_fn, x, _, _, ref_logits = problem
  np.testing.assert_allclose(np.asarray(logits_fn(jnp.asarray(x))), ref_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("norm,eps", [("Linf", 2 / 255), ("L2", 0.15)])
@pytest.mark.slow
def test_apgd_matches_reference(problem, norm, eps):
  net, logits_fn, x, xt, y, _ = problem
  ref_accs, ref_robust, ref_x_adv = reference_autoattack(net, xt, y, eps=eps, norm=norm)
  res = autoattack(logits_fn, x, y.astype(np.int32), eps=eps, norm=norm, version="custom",
                   attacks_to_run=["apgd-ce", "apgd-t"], seed=0)
  ours = res.robust_accuracy
  print(f"{norm} eps={eps:.4f}: reference {ref_accs}, jax {ours}")
  assert set(ref_accs) == {"apgd-ce", "apgd-t"}
  clean = float(np.mean(np.argmax(problem[5], 1) == y))
  assert ours["clean"] == pytest.approx(clean)
  # mid-range robust accuracy, so that the comparison means something
  assert 0.15 < ref_accs["apgd-t"] < ref_accs["apgd-ce"] < clean - 0.1
  for name in ("apgd-ce", "apgd-t"):
    assert abs(ours[name] - ref_accs[name]) <= TOL, (name, ours[name], ref_accs[name])
  robust = np.asarray(res.robust)
  assert np.mean(robust == ref_robust) >= 0.95
  # both sets of adversarial examples inside the threat model
  for xa in (np.asarray(res.x_adv), ref_x_adv):
    d = (xa - x).reshape(N, -1)
    dist = np.abs(d).max(1) if norm == "Linf" else np.sqrt((d.astype(np.float64) ** 2).sum(1))
    assert dist.max() <= eps * (1 + 1e-5) + 1e-6
