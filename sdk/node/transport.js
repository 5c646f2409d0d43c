"use strict";
/**
 * Where HTTP to the job gateway goes: its Unix socket in a job (`unix:///run/ainode/gateway.sock`), or a plain
 * http(s):// URL outside a container. The Node twin of sdk/transport.py; standard library only.
 */
const http = require("http");
const https = require("https");

const DEFAULT_SOCKET = "/run/ainode/gateway.sock";

/**
 * The module, request options and path prefix for `endpoint`. Throws a TypeError for another scheme.
 * @param {string} endpoint
 * @returns {{module: typeof http, options: object, prefix: string}}
 */
function target(endpoint) {
  const url = new URL(endpoint);
  if (url.protocol === "unix:") {
    return {module: http, options: {socketPath: url.pathname || DEFAULT_SOCKET, host: "gateway"}, prefix: ""};
  }
  if (url.protocol === "http:" || url.protocol === "https:") {
    return {module: url.protocol === "https:" ? https : http,
            options: {host: url.hostname, port: url.port || undefined}, prefix: url.pathname.replace(/\/+$/, "")};
  }
  throw new TypeError(`unsupported endpoint ${JSON.stringify(endpoint)}: use unix:///path or http://host:port`);
}

module.exports = {DEFAULT_SOCKET, target};
