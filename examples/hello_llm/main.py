"""The demo job: asks the job's model twice (generate and chat) and returns both answers with the metered usage."""
import ai_client


def handler(event, context):
    topic = (event or {}).get("topic", "the sea")
    poem = ai_client.generate(f"A short poem about {topic}:\n", temperature=0, seed=42, max_tokens=40)
    answer = ai_client.chat(
        [{"role": "user", "content": f"In a few words, what colour is {topic}?"}],
        temperature=0, seed=42, max_tokens=30,
    )
    print(f"job {context['jobId']} used model {context['modelId']}")
    return {"poem": poem.strip(), "colour": answer.strip(), "usage": ai_client.usage()}
