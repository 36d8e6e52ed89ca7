export { startDevLlm, devLlmModel, type DevLlmOptions, type DevLlmServer } from './server.ts';
export { decideAnswer, countTokens, type Answer, type ChatRequest, type ChatMessage } from './script.ts';
