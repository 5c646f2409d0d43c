"""A function that brings its own dependencies: pydantic checks the input, numpy does the arithmetic, and the job's
model writes one sentence about the result. Deploy the folder: `ainode deploy examples/numpy_pydantic` (its
requirements.txt is built into a layer once; the deploy waits for it), then
`ainode run numpy_pydantic --input '{"topic": "rainfall", "values": [3, 4.5, 5]}'`."""
import ai_client
import numpy as np
from pydantic import BaseModel, Field


class Request(BaseModel):
    topic: str = Field(default="rainfall", max_length=100)
    values: list[float] = Field(default=[3.0, 4.5, 5.0], min_length=1, max_length=10_000)


class Summary(BaseModel):
    topic: str
    count: int
    mean: float
    std: float
    sentence: str


def handler(event, context):
    request = Request.model_validate(event or {})
    values = np.asarray(request.values)
    mean, std = float(values.mean()), float(values.std())
    sentence = ai_client.generate(
        f"In one short sentence, describe {request.topic} with mean {mean:.2f} and spread {std:.2f}:",
        temperature=0, seed=42, max_tokens=30,
    )
    summary = Summary(topic=request.topic, count=values.size, mean=mean, std=std, sentence=sentence.strip())
    return {**summary.model_dump(), "numpy": np.__version__, "usage": ai_client.usage()}
