"""The Flask JSON route of the wsgi scenario: a small JSON object, as in issue 17's table."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/")
def index():
    return jsonify(message="Hello, world!", items=[1, 2, 3], ok=True)
