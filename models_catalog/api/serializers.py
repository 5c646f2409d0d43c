from rest_framework import serializers


class ModelDetailsSerializer(serializers.Serializer):
    family = serializers.CharField()
    parameter_size = serializers.CharField()
    quantization = serializers.CharField()


class CatalogEntrySerializer(serializers.Serializer):
    """One model as `GET /models` shows it (read-only: the nodes write the catalogue)."""

    id = serializers.CharField()
    name = serializers.CharField()
    size = serializers.IntegerField(allow_null=True)
    status = serializers.CharField()
    node = serializers.CharField()
    details = ModelDetailsSerializer(source="*")
    loaded = serializers.BooleanField()
    aliases = serializers.ListField(child=serializers.CharField())


class ModelListSerializer(serializers.Serializer):
    """`GET /models`: the original platform's shape."""

    models = CatalogEntrySerializer(many=True)
    warning = serializers.CharField(required=False, help_text="Present when a node did not answer: its models come "
                                                               "from the last known catalogue, marked unavailable.")
