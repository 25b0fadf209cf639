"""``fsrfer``: feature super-resolution GAN for low-resolution FER (paper 001, "FSR-FER").

Stages (the trainer runs them in order, each capped by ``trainer.max_epochs``):

1. ``extractor`` — the FER model (CovPoolFER, :mod:`lrfer.models.covpool`; or ``extractor=resnet18``) is
   trained with cross-entropy on high-resolution faces only (``[x1]``), then frozen (parameters and
   BatchNorm statistics). With ``extractor_weights=<run>/checkpoints/best.pt`` it is loaded instead
   and this stage is skipped.
2. ``pretrain`` — the generator G (:class:`~lrfer.models.fsr.RRDBGenerator`) is pre-trained with the
   feature MSE ``||G(F_lr) - F_hr||^2`` (official code: 40k iterations, Adam 2e-4 halved every 20k).
3. ``gan`` — WGAN-div, two optimisation steps per batch: ``critic`` minimises eq. 8,
   ``L(D) = E[D(F_hr)] - E[D(F_sr)] + k E[||grad D(x_hat)||^p]`` (k = 2, p = 6, x_hat a random
   interpolate of F_hr and F_sr), then ``generator`` minimises eq. 10,
   ``L(G) = L_gan + L_p + L_2`` with ``L_gan = E[D(F_sr)]`` (eq. 7), the perceptual loss on the frozen
   classifier's fc-128 outputs ``||C(F_sr) - C(F_hr)||^2`` (eq. 9) and the feature L2 loss. With
   ``reweight=true`` every sample's generator loss is multiplied by ``w = (sigma - p_true)^r`` (eq. 11),
   ``p_true`` the frozen classifier's softmax probability of the true class on C(F_sr).
   Adam with beta1 = 0, lr 2e-4 halved at the paper's milestones (20k, 50k, 100k, 200k iterations).

Stages 2-3 train on pairs (``needs_hr``): the face downsampled at a factor drawn per sample from
``factors`` (x2..x8, MATLAB bicubic) and resized back to the input size (bicubic), and the same face at
x1. One model serves every factor. Prediction: ``classify(embed(G(feature_map(image))))``; evaluation
rows also carry ``direct_acc``, the frozen classifier's accuracy without G (the paper's "Bicubic" row).

Choices the paper leaves open (also in ``experiments/fsrfer/README.md``):

* Reductions (eq. 9 and the official code): ``L_p`` and ``L_2`` are squared L2 norms summed per sample (over
  the 128 embedding dimensions / the 128 x 128 = 16,384 feature elements), then averaged over the batch;
  ``L_gan`` is the per-sample critic score averaged over the batch (:func:`generator_objective`). The
  generator pre-training loss is the same per-sample feature L2, as in the official code.
* Loss weights: eq. 10 sums the three terms with weight 1 (``adv_weight = perceptual_weight = l2_weight
  = 1``, the default); the official code used 1, 10 (perceptual) and 0.01 (feature L2)
  (``experiment=fsrfer/rafdb_official``).
* Re-weighting: sigma = 1.5, r = 1 as the paper's text says (the official code used r = 2,
  ``reweight_power=2``); p_true comes from the current F_sr through the frozen classifier (the "FSR
  classifier" of Fig. 2); the weight multiplies the per-sample sum of all generator terms (adversarial
  included), as the paper says ("applies on loss functions of generator"). The official code also weights
  the critic's two expectations (``reweight_critic=true``) and lets the gradient flow through ``w`` into G
  (``reweight_detach=false``); by default ``w`` is a constant (detached) and the critic is not re-weighted.
  The pre-training is never re-weighted.
* Learning rates: the paper's GAN lr is 2e-4, halved at 20k/50k/100k/200k iterations; the official code
  uses ``gan_lr`` = 2e-5 halved at 20k, 100k and 200k (its 50k boundary repeats the previous value) and
  TensorFlow's Adam beta2 = 0.999.
* Adam beta2 = 0.9 (the paper fixes only beta1 = 0); pre-training uses Adam (0.9, 0.999).
* Iterations -> epochs: the trainer schedules per epoch. Defaults are RAF-DB at batch 32 with lrfer's
  10% validation carve-out (11,044 training faces, 345 iterations per epoch, 383 with the paper's
  full 12,271): pre-training 40k iterations = 116 epochs halved every 58; GAN milestones 20k, 50k, 100k,
  200k = epochs 58, 145, 290, 580; GAN length 150k iterations = 435 epochs (the paper's convergence
  point with re-weighting; 400k = 1160 epochs without). ``schedule_scale`` multiplies all of these for
  short runs.
* G adds its output to its input (global skip), so it starts near the identity.
* The extractor's own training (stage 1) is not described by the paper (it used a pre-trained
  CovPoolFER): Adam 1e-3 for ``extractor_epochs`` epochs with the trainer's scheduler unless overridden;
  CovPoolFER's own recipe (884 epochs of batch 128, lr 5e-3 -> 1e-4 on its schedule file, Adam epsilon 0.1,
  centre loss 1e-2: ``method.center_loss``, :mod:`lrfer.methods.center_loss`) is
  ``experiment=fsrfer/rafdb_covpoolfer_isr``, trained once and reused with ``extractor_weights``.
* Precision: under the trainer's autocast (``trainer.precision=auto`` = bf16 on CUDA) only the generator
  runs in bf16; the frozen extractor's feature maps, the critic (eq. 7-8), its divergence term and the
  classifier head (eq. 9, 11) are float32 islands (:func:`full_precision`): F_sr and F_hr differ by a few
  hundredths, below what bf16's 8 significant bits resolve, and the p = 6 power multiplies the rounding of
  the gradient norm six times. ``tests/test_fsrfer_recipe.py`` checks every loss term on one batch under bf16
  autocast against float32 (relative 1e-5).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from lrfer.core.errors import UserError
from lrfer.methods.base import Batch, MethodContext, Stage
from lrfer.methods.hrclassifier import HRClassifierMethod, plain
from lrfer.models.fsr import FeatureCritic, RRDBGenerator, feature_shape


def classification_aware_weights(
    logits: torch.Tensor, labels: torch.Tensor, sigma: float = 1.5, power: float = 1.0
) -> torch.Tensor:
    """Eq. 11: ``w_i = (sigma - p_i)^r``, p_i the softmax probability of sample i's true class."""
    p_true = logits.float().softmax(dim=1).gather(1, labels[:, None]).squeeze(1)
    return (sigma - p_true).pow(power)


def perceptual_distance(e_sr: torch.Tensor, e_hr: torch.Tensor) -> torch.Tensor:
    """Eq. 9's summand: ``||C(F_sr_i) - C(F_hr_i)||_2^2`` per sample, a sum over the 128 dimensions, (N,)."""
    return (e_sr.float() - e_hr.float()).pow(2).flatten(1).sum(dim=1)


def feature_l2(f_sr: torch.Tensor, f_hr: torch.Tensor) -> torch.Tensor:
    """The feature-wise L2 loss of eq. 10 per sample: ``||F_sr_i - F_hr_i||_2^2``, a sum over every feature
    element (16,384 for the 128 x 128 map), (N,)."""
    return (f_sr.float() - f_hr.float()).pow(2).flatten(1).sum(dim=1)


def generator_objective(
    adv: torch.Tensor,
    perceptual: torch.Tensor,
    l2: torch.Tensor,
    weight: torch.Tensor | None = None,
    adv_weight: float = 1.0,
    perceptual_weight: float = 1.0,
    l2_weight: float = 1.0,
) -> torch.Tensor:
    """Eq. 10 with eq. 11:
    ``mean_i w_i (a D(F_sr_i) + p ||C(F_sr_i) - C(F_hr_i)||^2 + l ||F_sr_i - F_hr_i||^2)``.

    Every term is a per-sample value (N,): the critic score, and the two squared norms summed per sample
    (eq. 9's ``1/m sum_i ||.||_2^2``); ``weight`` (N,) is eq. 11's ``w_i`` (None = 1). The batch mean is
    eq. 9's ``1/m``; eq. 11 writes a plain sum over the batch, which only rescales the loss by the batch size
    (a constant that Adam's update ignores).
    """
    per_sample = adv_weight * adv.float() + perceptual_weight * perceptual + l2_weight * l2
    if weight is not None:
        per_sample = weight * per_sample
    return per_sample.mean()


def wgan_div_penalty(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    k: float = 2.0,
    p: float = 6.0,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Wasserstein-divergence term of eq. 8, ``k * E[||grad_x D(x_hat)||^p]``.

    ``x_hat = alpha * real + (1 - alpha) * fake`` with ``alpha ~ U(0, 1)`` per sample unless given. The
    gradient keeps its graph, so the term trains the critic. It is computed in float32 with autocast off
    (:func:`full_precision`): the p = 6 power of a gradient norm taken through bf16 would carry bf16's
    rounding six times over.
    """
    real, fake = real.detach().float(), fake.detach().float()
    if alpha is None:
        alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    with full_precision(real):
        x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        score = critic(x_hat)
        (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
        norm = grad.float().flatten(1).norm(dim=1)
        return k * norm.pow(p).mean()


def full_precision(like: torch.Tensor) -> torch.autocast:
    """A float32 island under the trainer's autocast (``trainer.precision=auto`` = bf16 on CUDA): the critic
    (eq. 7-8), its divergence term and the frozen classifier's head (eq. 9, eq. 11) run in float32 on the
    feature maps, whose entries differ between F_sr and F_hr by a few hundredths (bf16 keeps 8 significant
    bits). The generator keeps the autocast precision. Inputs must be cast to float32 by the caller."""
    return torch.autocast(device_type=like.device.type, enabled=False)


class FSRFER(HRClassifierMethod):
    """FSR-FER: frozen feature extractor + RRDB feature generator + WGAN-div critic (module docstring)."""

    extra_metrics = ("direct_acc",)

    def __init__(
        self,
        context: MethodContext,
        *,
        generator: dict,
        critic: dict,
        factors: Sequence[str] | None,
        pretrain_epochs: int,
        pretrain_step_epochs: int,
        gan_epochs: int,
        gan_milestones: Sequence[int],
        schedule_scale: float,
        lr: float,
        gan_lr: float | None,
        pretrain_betas: Sequence[float],
        gan_betas: Sequence[float],
        stage_optimizer: dict,
        lr_gamma: float,
        adv_weight: float,
        perceptual_weight: float,
        l2_weight: float,
        gp_k: float,
        gp_p: float,
        reweight: bool,
        reweight_sigma: float,
        reweight_power: float,
        reweight_critic: bool,
        reweight_detach: bool,
        **classifier: Any,
    ) -> None:
        """The generator, critic, schedule and loss options (configs/method/fsrfer.yaml) and, in
        ``classifier``, the frozen extractor's (:class:`~lrfer.methods.hrclassifier.HRClassifierMethod`)."""
        super().__init__(context, **classifier)
        channels, side, _ = feature_shape(self.classifier, context.in_channels, context.input_size)
        self.feature_channels, self.feature_side = channels, side
        self.generator = RRDBGenerator(channels, **(plain(generator) or {}))
        self.critic = FeatureCritic(channels, side, **(plain(critic) or {}))
        self.factors = self.labels_of(factors, context)
        if schedule_scale <= 0:
            raise UserError("method.schedule_scale must be positive")
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_step_epochs = pretrain_step_epochs
        self.gan_epochs = gan_epochs
        self.gan_milestones = list(plain(gan_milestones))
        self.schedule_scale = float(schedule_scale)
        self.lr = lr
        self.gan_lr = float(gan_lr) if gan_lr is not None else lr
        self.pretrain_betas = list(plain(pretrain_betas))
        self.gan_betas = list(plain(gan_betas))
        self.stage_optimizer = dict(plain(stage_optimizer))
        self.lr_gamma = float(lr_gamma)
        self.adv_weight, self.perceptual_weight, self.l2_weight = adv_weight, perceptual_weight, l2_weight
        self.gp_k, self.gp_p = gp_k, gp_p
        self.reweight = bool(reweight)
        self.reweight_sigma, self.reweight_power = reweight_sigma, reweight_power
        self.reweight_critic = bool(reweight_critic)
        self.reweight_detach = bool(reweight_detach)
        if self.reweight and reweight_sigma <= 1.0:
            raise UserError(
                "method.reweight_sigma must be > 1 so that every weight (sigma - p)^r is positive"
            )
        self._cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # -- stages --------
    def _scaled(self, epochs: int) -> int:
        return max(1, round(epochs * self.schedule_scale))

    def _feature_stage(
        self, name: str, epochs: int, lr: float, betas: list[float], scheduler: dict, steps: tuple[str, ...]
    ) -> Stage:
        """A stage of stages 2-3: pairs of the ``factors`` faces and x1, ``stage_optimizer`` at ``lr``."""
        return Stage(
            name,
            epochs=self._scaled(epochs),
            steps=steps,
            train_degrade=self.factors,
            val_degrade=self.factors,
            needs_hr=True,
            optimizer={**self.stage_optimizer, "lr": lr, "betas": betas},
            scheduler={**scheduler, "gamma": self.lr_gamma},
        )

    def stages(self) -> list[Stage]:
        stages = self.classifier_stages()
        if self.pretrain_epochs > 0:
            step = {"name": "step", "step_size": self._scaled(self.pretrain_step_epochs)}
            stages.append(
                self._feature_stage(
                    "pretrain", self.pretrain_epochs, self.lr, self.pretrain_betas, step, ("main",)
                )
            )
        if self.gan_epochs > 0:
            milestones = {"name": "multistep", "milestones": [self._scaled(m) for m in self.gan_milestones]}
            stages.append(
                self._feature_stage(
                    "gan", self.gan_epochs, self.gan_lr, self.gan_betas, milestones, ("critic", "generator")
                )
            )
        if not stages:
            raise UserError("fsrfer has nothing to train: pretrain_epochs and gan_epochs are both 0")
        return stages

    def stage_parameters(self, stage: Stage, step: str) -> Iterable[nn.Parameter]:
        if stage.name == "extractor":
            return self.classifier.parameters()
        return self.critic.parameters() if step == "critic" else self.generator.parameters()

    # -- features --------
    @torch.no_grad()
    def _features(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(F_lr, F_hr) of a batch from the frozen extractor, computed once for both GAN steps.

        The cache is keyed on the batch's image tensor, not on the dict: DistributedDataParallel on CUDA
        passes each step a rebuilt dict holding the same tensors.
        """
        if self._cache is not None and self._cache[0] is batch["image"]:
            return self._cache[1], self._cache[2]
        n = batch["image"].shape[0]
        both = self.hr_features(torch.cat([batch["image"], batch["image_hr"]]))
        f_lr, f_hr = both[:n], both[n:]
        self._cache = (batch["image"], f_lr, f_hr)
        return f_lr, f_hr

    def hr_features(self, images: torch.Tensor) -> torch.Tensor:
        """``SPD(F(x))`` of the frozen extractor, float32 throughout (:func:`full_precision`): F_hr is the
        target of stages 2-3 and F_lr the generator's input."""
        with full_precision(images):
            return self.classifier.feature_map(images.float()).float()

    def sr_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The frozen classifier's logits of a feature map, in float32 (:func:`full_precision`)."""
        with full_precision(features):
            return self.classifier.classify(self.classifier.embed(features.float()))

    # -- training --------
    def training_step(self, batch: Batch, stage: Stage, step: str) -> dict[str, torch.Tensor]:
        if stage.name == "extractor":
            return self.classifier_step(batch)
        if stage.name == "pretrain":
            return self.pretrain_step(batch)
        if step == "critic":
            return self.critic_step(batch)
        out = self.generator_step(batch)
        self._cache = None
        return out

    def pretrain_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        f_lr, f_hr = self._features(batch)
        self._cache = None
        f_sr = self.generator(f_lr)
        loss = feature_l2(f_sr, f_hr).mean()  # the official pre-training loss: per-sample sum, batch mean
        with torch.no_grad():
            logits = self.sr_logits(f_sr.detach())
        return {"loss": loss, "logits": logits}

    def critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Eq. 8: ``E[D(F_hr)] - E[D(F_sr)] + k E[||grad D(x_hat)||^p]``.

        With ``reweight_critic`` (the official code) the two expectations are weighted by eq. 11's ``w_i`` of
        the current F_sr, as the generator's terms are; the divergence term is not.
        """
        f_lr, f_hr = self._features(batch)
        with torch.no_grad():
            f_sr = self.generator(f_lr).float()
            weight = None
            if self.reweight and self.reweight_critic:
                weight = classification_aware_weights(
                    self.sr_logits(f_sr), batch["label"], self.reweight_sigma, self.reweight_power
                )
        with full_precision(f_hr):
            scores_real = self.critic(f_hr.float()).float()
            scores_fake = self.critic(f_sr).float()
        if weight is not None:
            scores_real, scores_fake = weight * scores_real, weight * scores_fake
        d_real, d_fake = scores_real.mean(), scores_fake.mean()
        gp = wgan_div_penalty(self.critic, f_hr, f_sr, self.gp_k, self.gp_p)
        return {
            "loss": d_real - d_fake + gp,
            "d_real": d_real.detach(),
            "d_fake": d_fake.detach(),
            "div_term": gp.detach(),
        }

    def generator_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Eq. 10 (+ eq. 11 when ``reweight``), :func:`generator_objective`: per-sample critic score and
        squared norms, weighted per sample, averaged over the batch."""
        f_lr, f_hr = self._features(batch)
        f_sr = self.generator(f_lr)
        f_sr = f_sr.float()
        with full_precision(f_sr):
            self.critic.requires_grad_(False)  # gradients flow through D to G only
            try:
                adv = self.critic(f_sr).float()  # eq. 7, per sample
            finally:
                self.critic.requires_grad_(True)
            e_sr = self.classifier.embed(f_sr).float()
            with torch.no_grad():
                e_hr = self.classifier.embed(f_hr.float()).float()
            perceptual = perceptual_distance(e_sr, e_hr)  # eq. 9
            l2 = feature_l2(f_sr, f_hr)
            logits = self.classifier.classify(e_sr)
        weight = None
        if self.reweight:
            weight = classification_aware_weights(
                logits.detach() if self.reweight_detach else logits,
                batch["label"],
                self.reweight_sigma,
                self.reweight_power,
            )
        loss = generator_objective(
            adv, perceptual, l2, weight, self.adv_weight, self.perceptual_weight, self.l2_weight
        )
        return {
            "loss": loss,
            "adv": adv.mean().detach(),
            "perceptual": perceptual.mean().detach(),
            "l2": l2.mean().detach(),
            "weight": weight.mean().detach() if weight is not None else torch.ones((), device=adv.device),
            "logits": logits.detach(),
        }

    # -- prediction --------
    def predict(self, images: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        return self.sr_logits(self.generator(self.hr_features(images)))

    def evaluate_step(self, batch: Batch, stage: Stage | None = None) -> dict[str, torch.Tensor]:
        if stage is not None and stage.name == "extractor":
            return {"logits": self.classifier(batch["image"])}
        features = self.hr_features(batch["image"])
        direct = self.sr_logits(features)
        logits = self.sr_logits(self.generator(features))
        return {"logits": logits, "direct_acc": (direct.argmax(1) == batch["label"]).float()}

    def evaluation_values(self, stage: Stage | None = None) -> tuple[str, ...]:
        return () if stage is not None and stage.name == "extractor" else ("direct_acc",)
