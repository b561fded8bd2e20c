// The test pages' static file server is the demo page's: scripts/serve.mjs (repository root,
// /models/ from the model cache, streamed with content-length).
export { serve } from '../../scripts/serve.mjs';
