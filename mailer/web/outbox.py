"""The built-in sink's outbox."""

from fastapi import APIRouter

router = APIRouter()
