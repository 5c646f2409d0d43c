from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0011_function_runtime'),
    ]

    operations = [
        migrations.AddField(
            model_name='dependencylayer',
            name='runtime',
            field=models.CharField(default='python', max_length=16),
        ),
        migrations.AlterField(
            model_name='dependencylayer',
            name='key',
            field=models.CharField(help_text='SHA-256 of the normalised requirements, the runtime and the runtime image.', max_length=64, unique=True),
        ),
        migrations.AlterField(
            model_name='dependencylayer',
            name='requirements',
            field=models.TextField(help_text='The normalised requirements.txt, or for node the normalised package.json and package-lock.json.'),
        ),
    ]
