// The README's quick start, type-checked against the installed package's declarations.
import { Client, InvalidArgumentError, OperationState } from "musicgw";

export async function quickstart(target: string, apiKey: string): Promise<void> {
  const client = new Client(target, apiKey);
  const op = await client.generate({ sample: { prompt: "drum loop", durationSeconds: 8 } }, { provider: "soundpiece" });
  for await (const event of client.watch(op.name)) {
    console.log(event.sequence, OperationState[event.operation!.state]);
  }
  const done = await client.wait(op.name);
  const result = await client.download(done.outputs[0].name, "loop.flac");
  console.log(result?.sha256, result?.verified);
  try {
    await client.generate({ sample: { prompt: "x", durationSeconds: 999 } });
  } catch (err) {
    if (err instanceof InvalidArgumentError) console.log(err.reason, err.fieldViolations);
  }
}
