/** Headers of the log protocol; the producer ones follow the Durable Streams protocol's names. */
export const headers = {
  producerId: 'Producer-Id',
  producerEpoch: 'Producer-Epoch',
  producerSequence: 'Producer-Seq',
  producerExpectedSequence: 'Producer-Expected-Seq',
  producerReceivedSequence: 'Producer-Received-Seq',
  expectedOffset: 'Expected-Offset',
  nextOffset: 'Log-Next-Offset',
  endOffset: 'Log-End-Offset',
  upToDate: 'Log-Up-To-Date',
  duplicate: 'Log-Duplicate',
} as const;
