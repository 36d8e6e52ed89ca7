import { z } from 'zod';

/** The runtime part of an image: what `run` starts when the user names no command. Mirrors the OCI image config. */
export const imageConfigSchema = z.object({
  entrypoint: z.array(z.string()).optional(),
  cmd: z.array(z.string()).optional(),
  env: z.array(z.string()).default([]),
  workingDir: z.string().optional(),
  user: z.string().optional(),
  exposedPorts: z.array(z.string()).default([]),
});
export type ImageConfig = z.infer<typeof imageConfigSchema>;

export const imageRecordSchema = z.object({
  digest: z.string(),
  config: imageConfigSchema,
  sizeBytes: z.number(),
  createdAt: z.string(),
  source: z.string(),
});
export type ImageRecord = z.infer<typeof imageRecordSchema> & { name?: string; diskPath: string };
