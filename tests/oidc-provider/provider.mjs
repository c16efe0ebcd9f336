// oidc-provider 9 on 127.0.0.1 for tests/authz_oidc.rs. Started by
// scripts/oidc-provider.sh. PORT (default 4000). Its development login
// forms (devInteractions) accept any password for the users below; the tests
// drive them over HTTP.
import Provider from 'oidc-provider';
import http from 'node:http';

const PORT = Number(process.env.PORT || 4000);
const ISSUER = `http://127.0.0.1:${PORT}`;
const USERS = {
  'dr-grey': { email: 'grey@stjohns.example', email_verified: true, name: 'Dr Meredith Grey', groups: ['clinicians'], roles: ['clinician'] },
  'p-alice': { email: 'alice@example.test', email_verified: true, name: 'Alice Patient', groups: [], roles: [] },
  'mallory': { email: 'mallory@stjohns.example', email_verified: false, name: 'Mallory', groups: [], roles: [] },
};

const provider = new Provider(ISSUER, {
  clients: [{
    client_id: 'careconnect-test',
    client_secret: 'careconnect-test-secret',
    redirect_uris: ['http://127.0.0.1:8080/callback'],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  scopes: ['openid', 'email', 'profile', 'roles'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], roles: ['roles', 'groups'] },
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    if (!USERS[id]) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...USERS[id] }; } };
  },
});

http.createServer(provider.callback()).listen(PORT, '127.0.0.1', () => console.log(`oidc-provider ${ISSUER} ready`));
