"""Adding a training method touches no library file: MART, defined and registered here.

MART (Wang et al., ICLR 2020; YisenWang/MART mart.py, ``mart_loss``): PGD on the cross-entropy from
``x + 0.001 N(0, 1)``, and the outer loss ``BCE(f(x'), y) + beta * KL(f(x) || f(x')) * (1 - p_y(x))``
with the boosted cross-entropy ``CE(f(x'), y) - log(1 - max_{k != y} p_k(x'))``. The test
registers it with its own config section and checks, then the project's generic layers pick it up:
the config builders, ``validate_config``, ``--config_help``, training and the report.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from saat_jax import methods
from saat_jax.attack import pgd
from saat_jax.losses import ce_loss_fn, cross_entropy
from saat_jax.methods import Method, MethodDef, register
from saat_jax.methods.base import fixed_budget
from saat_jax.testing.tiny import tiny_config



def mart_defaults() -> ml_collections.ConfigDict:
  # MART (Wang et al. 2020): PGD-10 on the CE, and the misclassification-aware outer loss.
  c = ml_collections.ConfigDict()
  c.beta = 6.0  # the weight of the misclassification-aware KL term
  c.eps = 8 / 255  # the attack's budget
  c.alpha = 2 / 255  # its step size
  c.steps = 10  # its steps
  return c


def mart_problems(config) -> list:
  m = config.mart
  return [f"mart.beta must be >= 0, got {m.beta} (MART uses 6)"] if not m.beta >= 0 else []


def mart_loss(beta):
  def loss(forward, batch_stats, x, x_adv, y):
    logits_adv, batch_stats = forward(x_adv, batch_stats)
    logits_nat, batch_stats = forward(x, batch_stats)
    p_adv, p_nat = jax.nn.softmax(logits_adv), jax.nn.softmax(logits_nat)
    top2 = jnp.argsort(p_adv, axis=-1)[:, -2:]
    new_y = jnp.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    other = jnp.take_along_axis(p_adv, new_y[:, None], -1)[:, 0]
    bce = cross_entropy(logits_adv, y) - jnp.log(1.0001 - other + 1e-12)
    kl = jnp.sum(p_nat * (jnp.log(p_nat + 1e-12) - jnp.log(p_adv + 1e-12)), -1)
    true = jnp.take_along_axis(p_nat, y[:, None], -1)[:, 0]
    return jnp.mean(bce) + beta * jnp.mean(kl * (1.0000001 - true)), logits_adv, batch_stats
  return loss


def mart(config) -> Method:
  m = config.mart

  def adversary(net, x, y, key):
    x_adv = pgd(ce_loss_fn(lambda xa: net.logits(xa, bn="eval")), x, y, eps=float(m.eps), alpha=float(m.alpha),
                steps=int(m.steps), key=key)
    return fixed_budget(x_adv, net.batch_stats, eps=float(m.eps), steps=int(m.steps))

  return Method("mart", adversary, mart_loss(float(m.beta)))


@pytest.fixture
def registered_mart():
  d = register(MethodDef("mart", mart, section="mart", defaults=mart_defaults, validate=mart_problems))
  yield d
  del methods.METHODS["mart"]


def mart_config():
  c = tiny_config("at", num_epochs=1)  # built after the registration: base_config() has the mart section
  c.method = "mart"
  c.mart.eps, c.mart.alpha, c.mart.steps = 32 / 255, 8 / 255, 3
  return c


def test_a_registered_method_gets_its_section_checks_and_help(registered_mart):
  from saat_jax.config_help import describe
  from saat_jax.train import validate_config

  c = mart_config()
  assert c.mart.beta == 6.0 and "mart" in methods.METHODS
  validate_config(c)
  c.mart.beta = -1.0
  with pytest.raises(ValueError, match=r"mart\.beta must be >= 0, got -1\.0 \(MART uses 6\)"):
    validate_config(c)
  text = describe(mart_config())
  assert "MART (Wang et al. 2020): PGD-10 on the CE" in text
  assert "the weight of the misclassification-aware KL term" in text
  # Without the registration the name is unknown, with the known ones listed
  c = mart_config()
  del methods.METHODS["mart"]
  try:
    with pytest.raises(ValueError, match=r"method='mart' is unknown; use one of \('natural', 'at'"):
      validate_config(c)
  finally:
    methods.METHODS["mart"] = registered_mart


def test_sections_cannot_be_taken_twice(registered_mart):
  with pytest.raises(ValueError, match=r"^a method named 'mart' is registered already; choose another name "
                                       r"\(or pass replace=True\)$"):
    register(registered_mart)
  with pytest.raises(ValueError, match="config section 'saat' belongs to method 'saat'"):
    register(MethodDef("mine", mart, section="saat", defaults=mart_defaults))


def test_a_definition_checks_its_own_fields_when_made():
  """MethodDef refuses a half-declared section and an unknown family, naming the method and the fix.
  (The package's own definitions are made at import time, before a test can observe them: these
  build new ones, so that the checks run where a test sees them.)"""
  with pytest.raises(ValueError, match=r"MethodDef 'm': give section and defaults together \(or neither\)"):
    MethodDef("m", mart, section="m")
  with pytest.raises(ValueError, match=r"MethodDef 'm': give section and defaults together"):
    MethodDef("m", mart, defaults=mart_defaults)
  with pytest.raises(ValueError, match=r"MethodDef 'm': family='MART'; use one of \('AT', 'TRADES'\)"):
    MethodDef("m", mart, family="MART")
  for family in methods.FAMILIES:  # both families, with and without a section, are accepted as given
    d = MethodDef("m", mart, section="m", defaults=mart_defaults, family=family)
    assert (d.family, d.section, d.validate(None), d.uses_sa_pgd, d.reads) == (family, "m", [], False, ())
  assert MethodDef("m", mart).section is None and MethodDef("m", mart).family == "AT"


def test_the_registry_by_name_replace_and_sections(registered_mart):
  from saat_jax.methods import base

  assert methods.method_def("mart") is registered_mart
  assert list(methods.METHODS)[-1] == "mart"  # registration order: after the package's own
  sections = methods.method_sections()
  assert list(sections)[-1] == "mart" and sections["mart"] == mart_defaults()
  assert "natural" not in sections and list(sections)[:1] == ["at"]  # natural owns no section
  with pytest.raises(ValueError, match=r"^method='mrat' is unknown; use one of \('natural', 'at', .*'mart'\) "
                                       r"\(did you mean 'mart'\?\)$"):
    methods.method_def("mrat")
  assert base.unknown_method("zzz").endswith("'mart')")  # nothing close: no suggestion
  assert methods.method_problems(ml_collections.ConfigDict({"method": "zzz"})) == [base.unknown_method("zzz")]
  # replace=True redefines the name in place, keeping its section (which it does not take twice)
  again = MethodDef("mart", mart, section="mart", defaults=mart_defaults, family="TRADES")
  assert methods.register(again, replace=True) is again and methods.method_def("mart").family == "TRADES"
  assert list(methods.METHODS)[-1] == "mart" and len(methods.METHODS) == len(sections) + 1
  # a section nobody owns is free, under a new name, with no section too
  plain = methods.register(MethodDef("plain", mart))
  try:
    assert methods.method_def("plain") is plain and "plain" not in methods.method_sections()
  finally:
    del methods.METHODS["plain"]


@pytest.mark.slow
def test_mart_trains_a_digits_epoch_and_appears_in_the_report(registered_mart, tmp_path):
  from saat_jax.report import report_runs
  from saat_jax.train import train_and_evaluate

  history = train_and_evaluate(mart_config(), str(tmp_path / "mart"))
  assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
  assert history[0]["attack_eps_mean"] == pytest.approx(32.0, abs=1e-3)  # in /255: MART's fixed budget
  saved = json.loads((tmp_path / "mart" / "config.json").read_text())
  assert saved["method"] == "mart" and saved["mart"]["steps"] == 3
  report = report_runs([str(tmp_path / "mart")], str(tmp_path / "report"), log=lambda m: None)
  text = json.dumps(report)
  assert "mart (eps=32), small_cnn" in text  # its section's budget names the run


def test_mart_outer_loss_matches_the_reference_formula():
  """The demo's loss against numpy, so that the test above trains the method it says it does."""
  rng = np.random.default_rng(0)
  ln, la = rng.normal(size=(6, 10)).astype(np.float32), rng.normal(size=(6, 10)).astype(np.float32)
  y = np.array([0, 3, 5, 7, 9, 1])
  outs = iter([la, ln])
  loss, _, _ = mart_loss(6.0)(lambda inputs, bs: (jnp.asarray(next(outs)), bs), {}, None, None, jnp.asarray(y))
  sm = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
  pa, pn = sm(la.astype(np.float64)), sm(ln.astype(np.float64))
  expected = 0.0
  for i in range(6):
    order = np.argsort(pa[i])
    other = order[-2] if order[-1] == y[i] else order[-1]
    bce = -np.log(pa[i, y[i]]) - np.log(1.0001 - pa[i, other] + 1e-12)
    kl = np.sum(pn[i] * (np.log(pn[i] + 1e-12) - np.log(pa[i] + 1e-12)))
    expected += bce / 6 + 6.0 * kl * (1.0000001 - pn[i, y[i]]) / 6
  assert float(loss) == pytest.approx(expected, rel=1e-5)
