/** @odoo-module **/
/**
 * The "crm_realtime" web-client service: connects the logged-in user to the
 * crm-realtime sidecar and hands its events to the rest of the web client.
 *
 *     const realtime = useService("crm_realtime");
 *     const off = realtime.on("prospect:updated", (lead) => ...);  // call off() on unmount
 *
 * Events: prospect:created / prospect:updated / prospect:deleted (payload as
 * documented in the addon's readme) and notification, which is also shown as
 * a toast. Token minting and refresh: see realtime_connection.js.
 */
import { registry } from "@web/core/registry";
import { loadJS } from "@web/core/assets";
import { RealtimeConnection } from "@crm_realtime/js/realtime_connection";

const TOKEN_ROUTE = "/crm_realtime/token";
// The sidecar serves the official socket.io-client build matching its server
// (nothing third-party is shipped in the addon).
const CLIENT_SCRIPT = "/client/socket.io.min.js";
const TOAST_TYPES = new Set(["info", "success", "warning", "danger"]);

export const crmRealtimeService = {
    // "company" first: it puts the active company in user.context, which the
    // token route reads (request.env.company) to choose the organization.
    dependencies: ["rpc", "user", "company", "notification"],
    start(env, { rpc, user, notification }) {
        const connection = new RealtimeConnection({
            fetchToken: () => rpc(TOKEN_ROUTE, { context: user.context }, { silent: true }),
            loadClient: async (url) => {
                await loadJS(url.replace(/\/+$/, "") + CLIENT_SCRIPT);
                return window.io;
            },
        });
        connection.on("notification", (payload) => {
            notification.add(payload.message || payload.title || "", {
                title: payload.message ? payload.title : undefined,
                type: TOAST_TYPES.has(payload.type) ? payload.type : "info",
            });
        });
        // Not awaited: the web client must not wait for (or fail with) the sidecar.
        connection.start().catch((error) => console.warn("crm_realtime: not connected", error));
        return {
            on: (event, handler) => connection.on(event, handler),
            get connected() {
                return connection.connected;
            },
        };
    },
};

registry.category("services").add("crm_realtime", crmRealtimeService);
