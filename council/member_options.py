"""A member's Serve deployment and decoding options (`deployment:`, `generation:` in a specialist's config), and
which members are asked first (`router.escalation`).

Pydantic only; `council.config` builds the specialist and council configs over them and re-exports them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["AutoscalingOptions", "DeploymentOptions", "EscalationConfig", "GenerationOptions", "StrictModel"]


class StrictModel(BaseModel):
    # Unknown keys are typos in a config file: refuse them rather than ignore them silently.
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoscalingOptions(StrictModel):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 lets an idle specialist scale to zero.")
    max_replicas: int = Field(2, ge=1, description="Most replicas (each takes num_gpus GPUs).")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at deploy time (default: min).")
    target_ongoing_requests: float = Field(2.0, gt=0, description="Ongoing requests per replica to aim for.")
    upscale_delay_s: float = Field(30.0, ge=0, description="Seconds of sustained demand before adding one.")
    downscale_delay_s: float = Field(600.0, ge=0, description="Seconds of low demand before removing one.")
    metrics_interval_s: float = Field(10.0, gt=0, description="How often replicas report load.")
    look_back_period_s: float = Field(30.0, gt=0, description="Window the load average is taken over.")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingOptions:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must be <= max_replicas")
        return self


class DeploymentOptions(StrictModel):
    num_replicas: int = Field(1, ge=1, description="Fixed replica count (ignored when autoscaling is set).")
    autoscaling: AutoscalingOptions | None = Field(None, description="Serve autoscaling; overrides num_replicas.")
    num_cpus: float = Field(0.1, ge=0, description="CPUs per replica; small fractions let a council fit 2 cores.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica: 1 on GPU clusters, 0 on CPU.")
    max_ongoing_requests: int = Field(16, ge=1, description="Requests a replica works on at once.")
    max_queued_requests: int = Field(
        64, ge=-1, description="Requests queued per caller before Serve refuses (503); -1 = unbounded."
    )
    max_batch_size: int = Field(8, ge=1, description="Largest dynamic batch (@serve.batch) per forward pass.")
    batch_wait_timeout_s: float = Field(
        0.01,
        ge=0,
        description="How long a batch waits to fill up when other requests are in the replica (a request alone "
        "runs at once; requests arriving during a forward pass join the next one whatever this is).",
    )
    health_check_period_s: float = Field(10.0, gt=0, description="Seconds between Serve health checks.")
    health_check_timeout_s: float = Field(30.0, gt=0, description="A health check slower than this fails.")
    stuck_after_s: float = Field(
        300.0, gt=0, description="A forward pass running longer than this fails the health check (a wedged model)."
    )
    max_adapters_per_replica: int | None = Field(
        None,
        ge=1,
        description="A base's deployment only: most adapters one replica holds at once. With more members on the "
        "base, Serve's model multiplexing sends each request to a replica that has its adapter; a replica loads one "
        "on first use and evicts its least recently used one. None: every replica holds all of them.",
    )


class GenerationOptions(StrictModel):
    max_new_tokens: int = Field(32, ge=1, le=4096, description="Most tokens a member may generate.")
    do_sample: bool = Field(False, description="Greedy (False) is reproducible and the default.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (only with do_sample).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (only with do_sample).")
    stop: list[str] = Field(default_factory=lambda: ["\n"], description="Generation ends at these strings.")


class EscalationConfig(StrictModel):
    """Confidence escalation: the top `first` routed members are asked first; the rest of the top-k only when they
    do not settle the question (one failed, one said "unknown", their agreement is below `min_agreement`, or one's
    own confidence is below `min_confidence`)."""

    first: int = Field(1, ge=1, description="Members asked first (the top of the route); must be below router.k.")
    min_agreement: float = Field(
        1.0, ge=0, le=1, description="The first members' weighted agreement below which the rest are asked."
    )
    step: int | None = Field(
        None, ge=1, description="Members added per widening, stopping once the answers so far decide the k-member "
        "vote whatever the rest would say; None: all the rest at once.",
    )  # fmt: skip
    min_confidence: float | None = Field(
        None, ge=0, le=1, description="A first member's own confidence in its answer (its tokens' geometric-mean "
        "probability) below which the rest are asked; an answer without one is unsure too (a streamed answer and an "
        "`openai` member report none, so with them every request widens). None: confidence is not looked at.",
    )  # fmt: skip
