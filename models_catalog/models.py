"""AI nodes and the model catalogue: what each node was last seen to serve, and the operator's switches.

The catalogue is a cache of the nodes' own listings plus the operator's decisions (disable a model or a node,
alias a name to a model). It is written only by `services.sync_catalogue` (and the admin); `GET /models`,
routing and the fallback when a node is down all read it.
"""
from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone


class NodeKind(models.TextChoices):
    OLLAMA = "ollama", "Ollama"
    OPENAI = "openai", "OpenAI-compatible"


class NodeSource(models.TextChoices):
    SETTINGS = "settings", "settings (AI_NODES / AI_NODE_URL)"
    ADMIN = "admin", "admin"


def _default_queue() -> str:
    return settings.JOB_QUEUE


class AINode(models.Model):
    """An AI node, and the Celery queue of the workers that sit next to it.

    Nodes from settings are written into rows at each sync (settings win for kind, URL and queue; the operator
    keeps the `enabled` switch). Nodes added in the admin are never touched by the sync.
    """

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=10, choices=NodeKind.choices, default=NodeKind.OPENAI)
    url = models.URLField(max_length=500)
    queue = models.CharField(max_length=100, default=_default_queue,
                             help_text="The Celery queue of the workers that serve this node's models.")
    enabled = models.BooleanField(default=True, help_text="A disabled node is neither asked nor routed to.")
    max_concurrent_calls = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Model calls the node serves at once, across all its workers; more wait their turn in fair-share "
                  "order. Empty: no limit.")
    source = models.CharField(max_length=10, choices=NodeSource.choices, default=NodeSource.ADMIN, editable=False)
    last_seen_at = models.DateTimeField(null=True, blank=True, help_text="When the node last answered a sync.")
    last_error = models.TextField(blank=True, help_text="Why the last sync could not list the node's models.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "AI node"

    def __str__(self) -> str:
        return self.name


class ModelStatus(models.TextChoices):
    """available: its node listed it at the last sync. unavailable: its node did not list it, or did not answer.
    disabled: the operator switched the model (or its node) off. Sync moves available <-> unavailable; only the
    operator's switches move a model into or out of disabled."""

    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"
    DISABLED = "disabled"


class ModelCatalogQuerySet(models.QuerySet):
    def real(self) -> "ModelCatalogQuerySet":
        """Models that nodes serve (not operator aliases)."""
        return self.filter(node__isnull=False)

    def aliases(self) -> "ModelCatalogQuerySet":
        return self.filter(node__isnull=True)

    def routable(self) -> "ModelCatalogQuerySet":
        return self.real().filter(enabled=True, status=ModelStatus.AVAILABLE, node__enabled=True)


class ModelCatalog(models.Model):
    """One model on one node, or (with no node) an operator's alias.

    A real row has a `node` and no `alias_of`: it is what the node listed. An alias row has no `node` and
    `alias_of` names another model id: a job asking for the alias runs on that model (on whichever node serves
    it), and records the real id. Aliases never shadow a real model: when some node serves a model of the same
    name, the real model wins.
    """

    node = models.ForeignKey(AINode, on_delete=models.CASCADE, related_name="models", null=True, blank=True)
    model_id = models.CharField(max_length=200, help_text="The id users pass as modelId.")
    name = models.CharField(max_length=200, blank=True)
    size = models.BigIntegerField(null=True, blank=True, help_text="Bytes, as the node reports them.")
    family = models.CharField(max_length=100, blank=True)
    parameter_size = models.CharField(max_length=50, blank=True)
    quantization = models.CharField(max_length=50, blank=True)
    loaded = models.BooleanField(default=False, help_text="In the node's memory at the last sync.")
    status = models.CharField(max_length=12, choices=ModelStatus.choices, default=ModelStatus.AVAILABLE)
    enabled = models.BooleanField(default=True, help_text="The operator's switch: a disabled model is refused.")
    alias_of = models.CharField(max_length=200, blank=True,
                                help_text="For an alias (no node): the model id this name stands for.")
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    # Prices per 1,000 tokens are added here by the billing work (price_prompt_per_1k, price_completion_per_1k).

    objects = ModelCatalogQuerySet.as_manager()

    class Meta:
        ordering = ["model_id", "node__name"]
        verbose_name = "model"
        constraints = [
            models.UniqueConstraint(fields=["node", "model_id"], name="unique_model_per_node"),
            models.UniqueConstraint(fields=["model_id"], condition=Q(node__isnull=True), name="unique_alias"),
            models.CheckConstraint(
                condition=(Q(node__isnull=False) & Q(alias_of="")) | (Q(node__isnull=True) & ~Q(alias_of="")),
                name="model_is_real_or_alias",
            ),
        ]
        indexes = [models.Index(fields=["model_id", "status"])]

    def __str__(self) -> str:
        if self.is_alias:
            return f"{self.model_id} -> {self.alias_of}"
        return f"{self.model_id} @ {self.node}"

    def save(self, *args, **kwargs) -> None:
        # The operator's switch decides `disabled`; a re-enabled model waits for the next sync to be available.
        if not self.enabled:
            self.status = ModelStatus.DISABLED
        elif self.status == ModelStatus.DISABLED:
            self.status = ModelStatus.UNAVAILABLE
        super().save(*args, **kwargs)

    @property
    def is_alias(self) -> bool:
        return self.node_id is None

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if self.node_id is None and not self.alias_of:
            raise ValidationError("Give either a node (a model) or alias_of (an alias).")
        if self.node_id is not None and self.alias_of:
            raise ValidationError("An alias has no node; a model on a node is not an alias.")
        if self.alias_of:
            if self.alias_of == self.model_id:
                raise ValidationError({"alias_of": "An alias cannot stand for itself."})
            if not ModelCatalog.objects.real().filter(model_id=self.alias_of).exists():
                raise ValidationError({"alias_of": f"No node has served a model {self.alias_of!r}."})
            if ModelCatalog.objects.real().filter(model_id=self.model_id).exists():
                raise ValidationError({"model_id": f"{self.model_id!r} is a real model; it cannot be an alias."})
