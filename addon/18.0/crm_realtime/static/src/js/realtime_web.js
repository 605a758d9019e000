/** @odoo-module **/
/**
 * What the "crm_realtime" service does in every Odoo version; each version's
 * crm_realtime_service.js only gathers Odoo's APIs of that version (how to
 * call a JSON route, where the user's context is) and registers the service.
 */
import { loadJS } from "@web/core/assets";
import { RealtimeConnection, clientScriptUrl } from "@crm_realtime/js/realtime_connection";

export const TOKEN_ROUTE = "/crm_realtime/token";
const TOAST_TYPES = new Set(["info", "success", "warning", "danger"]);

/**
 * Connect and return the service's API ({on, connected}).
 * fetchToken() posts to TOKEN_ROUTE with the user's context (it carries
 * allowed_company_ids, which the route reads to choose the organization).
 */
export function startRealtime({ fetchToken, notification }) {
    const connection = new RealtimeConnection({
        fetchToken,
        loadClient: async (url, attempt) => {
            await loadJS(clientScriptUrl(url, attempt));
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
}
