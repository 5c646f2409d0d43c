"""Inserting one row: the INSERT that `Model.objects.create(**fields)` writes, with its values prepared as the ORM
prepares them (each field's `pre_save` and `get_db_prep_save`), but its text made once per model and database.

Building that INSERT with the ORM cost about a tenth of an admission's CPU (the Job row, with its 35 columns, and its
`queued` event): the compiler walks every field and value to make a statement whose text depends only on the model.

For rows of models that no signal receiver watches: no `pre_save` or `post_save` is sent. Values are plain values,
not expressions; a primary key that the database makes (an AutoField) is left to it and not read back.
"""
from django.db import connections, models, router
from django.db.models import Field

# The statement's text and its fields, per model and database vendor.
_STATEMENTS: dict[tuple[type[models.Model], str], tuple[str, list[Field]]] = {}


def insert(instance: models.Model) -> None:
    """Write `instance` as a new row of its model, in the caller's transaction, on the model's database for
    writes; the instance is then saved as far as the ORM can tell (`_state`), as after `create`."""
    model = type(instance)
    alias = router.db_for_write(model, instance=instance)
    connection = connections[alias]
    shape = (model, connection.vendor)
    statement = _STATEMENTS.get(shape)
    if statement is None:
        statement = _STATEMENTS[shape] = _statement(model, connection.ops.quote_name)
    text, fields = statement
    params = [field.get_db_prep_save(field.pre_save(instance, add=True), connection) for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(text, params)
    instance._state.adding = False
    instance._state.db = alias


def _statement(model: type[models.Model], quote) -> tuple[str, list[Field]]:
    meta = model._meta
    if meta.parents:
        raise TypeError(f"{meta.label}: insert() writes one table; a model with parents has more")
    fields = [field for field in meta.local_concrete_fields if field is not meta.auto_field and not field.generated]
    for field in fields:
        if hasattr(field, "get_placeholder"):  # a field whose value is not a plain %s parameter (GIS)
            raise TypeError(f"{meta.label}.{field.name}: insert() writes each value as a plain parameter")
    columns = ", ".join(quote(field.column) for field in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    return f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES ({placeholders})", fields
