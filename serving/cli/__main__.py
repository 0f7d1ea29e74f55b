from serving.cli.main import app

app()
