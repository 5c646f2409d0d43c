"""Request bodies taken with the JSON types the OpenAPI schema gives them: DRF's fields quietly convert (0 for a
string, "true" or 1 for a boolean, "5" for an integer), so a body the schema forbids would be accepted."""
from collections.abc import Mapping
from typing import Any

from rest_framework import serializers

# (field class, the JSON types it takes), most particular first: a BooleanField is no IntegerField, and bool is int.
JSON_TYPES: tuple[tuple[type, tuple[type, ...], str], ...] = (
    (serializers.BooleanField, (bool,), "a boolean"),
    (serializers.IntegerField, (int,), "an integer"),
    (serializers.DecimalField, (int, float), "a number"),
    (serializers.FloatField, (int, float), "a number"),
    (serializers.CharField, (str,), "a string"),
    (serializers.ChoiceField, (str,), "a string"),
    (serializers.UUIDField, (str,), "a string"),
    (serializers.ListField, (list,), "a list"),
    (serializers.DictField, (dict,), "an object"),
)


def type_error(field: serializers.Field, value: Any) -> str | None:
    """What is wrong with `value`'s JSON type for `field`, or None (also for fields of any type)."""
    for kind, types, name in JSON_TYPES:
        if isinstance(field, kind):
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                return f"Must be {name}."
            if isinstance(field, serializers.ListField):
                return next((error for item in value if (error := type_error(field.child, item))), None)
            return None
    return None


class StrictTypes:
    """A serializer mixin: a field given a value of another JSON type than its own is refused (`invalid`)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            errors = {name: [error] for name, field in self.fields.items()
                      if not field.read_only and data.get(name) is not None
                      and (error := type_error(field, data[name]))}
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)
