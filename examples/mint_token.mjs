#!/usr/bin/env node
// Mint a cxrelay viewer token from your own application (Node.js, no
// dependencies: a JWT signed with HS256 is just base64url and an HMAC).
//
// The secret is cxrelay's [auth] secret. The token names the cameras it opens
// (or "*" for all) and when it expires; cxrelay refuses tokens without "exp".
// Give it to the page: <cxrelay-player token="..."> sends it as ?token=, or
// set the cxrelay_token cookie.
//
//   CXRELAY_AUTH_SECRET=... node mint_token.mjs lobby door --ttl 3600 --subject kiosk-1
//
// In your app: import { mintToken } from './mint_token.mjs';

import { createHmac } from 'node:crypto';
import { argv, env, exit } from 'node:process';
import { pathToFileURL } from 'node:url';

const base64url = (data) => Buffer.from(data).toString('base64url');

/**
 * @param {string} secret       cxrelay's [auth] secret
 * @param {string[]|'*'} cameras camera names, or '*' for every camera
 * @param {number} ttlSeconds   lifetime
 * @param {string} [subject]    who the token is for (logged by cxrelay)
 * @returns {string} the token
 */
export function mintToken(secret, cameras, ttlSeconds, subject) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { cameras, iat: now, exp: now + Math.ceil(ttlSeconds) };
  if (subject) claims.sub = subject;
  const signingInput = `${base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.` +
    base64url(JSON.stringify(claims));
  const signature = createHmac('sha256', secret).update(signingInput).digest('base64url');
  return `${signingInput}.${signature}`;
}

function main(args) {
  const cameras = [];
  let ttl = 3600;
  let subject;
  let secretEnv = 'CXRELAY_AUTH_SECRET';
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--ttl') ttl = Number(args[++i]);
    else if (args[i] === '--subject') subject = args[++i];
    else if (args[i] === '--secret-env') secretEnv = args[++i];
    else cameras.push(args[i]);
  }
  const secret = env[secretEnv];
  if (!secret || cameras.length === 0 || !(ttl > 0)) {
    console.error('usage: CXRELAY_AUTH_SECRET=... node mint_token.mjs CAMERA... ' +
      '[--ttl SECONDS] [--subject WHO] [--secret-env VAR]');
    exit(2);
  }
  const claim = cameras.length === 1 && cameras[0] === '*' ? '*' : cameras;
  console.log(mintToken(secret, claim, ttl, subject));
}

if (import.meta.url === pathToFileURL(argv[1] ?? '').href) main(argv.slice(2));
