from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import services
from .models import AINode, ModelCatalog

# What a sync writes: the operator reads these, the nodes decide them.
NODE_WRITTEN = ("name", "size", "family", "parameter_size", "quantization", "loaded", "status", "first_seen_at",
                "last_seen_at")


def _report_sync(modeladmin: admin.ModelAdmin, request: HttpRequest) -> None:
    answer = services.sync_catalogue()
    for node in answer.nodes:
        if node.answered:
            modeladmin.message_user(request, f"Node {node.name}: {node.model_count} model(s) listed.", messages.SUCCESS)
        else:
            modeladmin.message_user(request, f"Node {node.name}: no answer ({node.error}).", messages.WARNING)
    if not answer.nodes:
        modeladmin.message_user(request, answer.warning, messages.WARNING)


@admin.register(AINode)
class AINodeAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "url", "queue", "max_concurrent_calls", "enabled", "source", "last_seen_at",
                    "short_error")
    list_filter = ("enabled", "kind", "source")
    search_fields = ("name", "url", "queue")
    readonly_fields = ("source", "last_seen_at", "last_error", "created_at")
    actions = ("sync_now", "enable", "disable")

    def get_readonly_fields(self, request: HttpRequest, obj: AINode | None = None) -> tuple[str, ...]:
        # A node from settings is described by settings (AI_NODES' max_concurrent_calls, or
        # AI_NODE_MAX_CONCURRENT_CALLS, for its call limit): editing it here would be undone by the next sync.
        if obj is not None and obj.source == "settings":
            return ("name", "kind", "url", "queue", "max_concurrent_calls", *self.readonly_fields)
        return self.readonly_fields

    @admin.display(description="last error")
    def short_error(self, node: AINode) -> str:
        return node.last_error[:120]

    @admin.action(description="Sync now (ask every enabled node for its models)")
    def sync_now(self, request: HttpRequest, queryset: QuerySet[AINode]) -> None:
        _report_sync(self, request)

    @admin.action(description="Enable selected nodes")
    def enable(self, request: HttpRequest, queryset: QuerySet[AINode]) -> None:
        count = services.set_nodes_enabled(nodes=queryset, enabled=True)
        self.message_user(request, f"{count} node(s) enabled; their models are available after the next sync.")

    @admin.action(description="Disable selected nodes")
    def disable(self, request: HttpRequest, queryset: QuerySet[AINode]) -> None:
        count = services.set_nodes_enabled(nodes=queryset, enabled=False)
        self.message_user(request, f"{count} node(s) disabled.")


class IsAliasFilter(admin.SimpleListFilter):
    title = "kind"
    parameter_name = "kind"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("model", "models on nodes"), ("alias", "aliases")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ModelCatalog]) -> QuerySet[ModelCatalog]:
        if self.value() == "model":
            return queryset.filter(node__isnull=False)
        if self.value() == "alias":
            return queryset.filter(node__isnull=True)
        return queryset


@admin.register(ModelCatalog)
class ModelCatalogAdmin(admin.ModelAdmin):
    """Models come from the nodes; the operator switches them on and off and adds aliases ("Add model" makes an
    alias: a name that stands for a model some node serves)."""

    list_display = ("model_id", "node", "status", "enabled", "loaded", "alias_of", "parameter_size",
                    "quantization", "last_seen_at")
    list_filter = (IsAliasFilter, "status", "enabled", "loaded", "node")
    search_fields = ("model_id", "name", "alias_of", "node__name")
    list_select_related = ("node",)
    actions = ("sync_now", "enable", "disable")

    def get_fields(self, request: HttpRequest, obj: ModelCatalog | None = None) -> tuple[str, ...]:
        if obj is None or obj.is_alias:
            return ("model_id", "alias_of", "enabled")
        return ("model_id", "node", "enabled", *NODE_WRITTEN)

    def get_readonly_fields(self, request: HttpRequest, obj: ModelCatalog | None = None) -> tuple[str, ...]:
        if obj is None or obj.is_alias:
            return ()
        return ("model_id", "node", *NODE_WRITTEN)

    @admin.action(description="Sync now (ask every enabled node for its models)")
    def sync_now(self, request: HttpRequest, queryset: QuerySet[ModelCatalog]) -> None:
        _report_sync(self, request)

    @admin.action(description="Enable selected models")
    def enable(self, request: HttpRequest, queryset: QuerySet[ModelCatalog]) -> None:
        count = services.set_models_enabled(models=queryset, enabled=True)
        self.message_user(request, f"{count} model(s) enabled; they are available after the next sync.")

    @admin.action(description="Disable selected models")
    def disable(self, request: HttpRequest, queryset: QuerySet[ModelCatalog]) -> None:
        count = services.set_models_enabled(models=queryset, enabled=False)
        self.message_user(request, f"{count} model(s) disabled.")
