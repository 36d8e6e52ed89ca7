import type { SessionManager } from '../session-manager.ts';

// A whole agent in busybox sh: it keeps a turn counter in memory, notes on disk, and a child
// process, so a wake can show all three came back. It speaks the agent protocol as JSON lines.
export const shellAgent = String.raw`
sleeper() { while true; do sleep 1; done; }
sleeper & child=$!
turns=0
while read -r line; do
  case "$line" in
  *'"type":"hello"'*)
    turns=$(echo "$line" | grep -o '"role":"user"' | wc -l) ;;
  *'"type":"wake"'*)
    [ -n "$sleeping" ] || continue
    sleeping=
    echo "{\"type\":\"text-delta\",\"turnId\":\"$turn\",\"delta\":\"woke up\"}"
    echo "{\"type\":\"turn-finish\",\"turnId\":\"$turn\"}" ;;
  *'"type":"message"'*)
    turn=$(echo "$line" | sed 's/.*"turnId":"\([^"]*\)".*/\1/')
    text=$(echo "$line" | sed 's/.*"content":"\([^"]*\)".*/\1/')
    turns=$((turns + 1))
    echo "$text" >> /root/notes.txt
    echo "{\"type\":\"turn-start\",\"turnId\":\"$turn\"}"
    if [ "$text" = "hostile" ]; then
      # Lines that break the protocol: a delta without text, a message that is not one, a timer
      # that is not a time. The host must refuse each at its boundary and still finish the turn.
      echo "{\"type\":\"text-delta\",\"turnId\":\"$turn\"}"
      echo "{\"type\":\"message-finish\",\"turnId\":\"$turn\",\"message\":\"not a message\"}"
      echo "{\"type\":\"sleep-until\",\"turnId\":\"$turn\",\"until\":\"tomorrow\"}"
      echo "{\"type\":\"turn-finish\",\"turnId\":\"$turn\"}"
      continue
    fi
    if [ "$text" = "sleep" ]; then
      until=$(date -u -d @$(( $(date +%s) + 2 )) +%Y-%m-%dT%H:%M:%SZ)
      sleeping=1
      echo "{\"type\":\"sleep-until\",\"turnId\":\"$turn\",\"until\":\"$until\",\"reason\":\"rate limited\"}"
      continue
    fi
    # A turn that takes a while: long enough to kill its node in the middle of it.
    [ "$text" = "slow" ] && sleep 4
    alive=no; kill -0 $child 2>/dev/null && alive=yes
    reply="turn $turns: $text; notes $(wc -l < /root/notes.txt); child $alive"
    echo "{\"type\":\"text-delta\",\"turnId\":\"$turn\",\"delta\":\"$reply\"}"
    echo "{\"type\":\"message-finish\",\"turnId\":\"$turn\",\"message\":{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"$reply\"}]}}"
    echo "{\"type\":\"turn-finish\",\"turnId\":\"$turn\"}" ;;
  esac
done
`;

/** The session spec tests give the shell agent: the base image, one vCPU, 256 MiB. */
export const shellAgentSpec = (idleSeconds: number) => ({ image: 'base', command: ['sh', '-c', shellAgent], env: [], cpus: 1, memoryMiB: 256, idleSeconds });

/** The text a turn's events streamed (its text-delta events, joined). */
export const replyText = (events: ReadonlyArray<{ type: string }>): string =>
  events
    .filter((event) => event.type === 'text-delta')
    .map((event) => String((event as unknown as { delta: string }).delta))
    .join('');

/** Sends a message and returns the reply's text with the steps of the wake it caused (none if it woke nothing). */
export async function sendWithWakeSteps(manager: SessionManager, id: string, content: string): Promise<{ reply: string; steps: string[] }> {
  let steps: string[] = [];
  const onWake = (woken: string, timeline: { steps: Array<{ step: string }> }) => {
    if (woken === id) steps = timeline.steps.map((entry) => entry.step);
  };
  manager.on('wake', onWake);
  try {
    const { events } = await manager.send(id, content);
    return { reply: replyText(events), steps };
  } finally {
    manager.off('wake', onWake);
  }
}
