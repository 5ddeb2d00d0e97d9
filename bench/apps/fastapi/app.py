"""A small FastAPI app (pydantic model, path parameter, JSON): the memory scenario's subject."""

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Item(BaseModel):
    id: int
    name: str
    tags: list[str] = []


@app.get("/")
async def root() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/items/{item_id}")
async def item(item_id: int) -> Item:
    return Item(id=item_id, name=f"item {item_id}", tags=["a", "b"])
