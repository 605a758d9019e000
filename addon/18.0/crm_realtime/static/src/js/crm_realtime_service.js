/** @odoo-module **/
/**
 * The "crm_realtime" web-client service (Odoo 18.0): connects the logged-in
 * user to the crm-realtime sidecar and hands its events to the web client.
 *
 *     const realtime = useService("crm_realtime");
 *     const off = realtime.on("prospect:updated", (lead) => ...);  // call off() on unmount
 *
 * Events: prospect:created / prospect:updated / prospect:deleted (payload as
 * documented in the addon's readme) and notification, also shown as a toast.
 * Since 17.1 rpc and user are modules, not services.
 */
import { registry } from "@web/core/registry";
import { rpc } from "@web/core/network/rpc";
import { user } from "@web/core/user";
import { startRealtime, TOKEN_ROUTE } from "@crm_realtime/js/realtime_web";

export const crmRealtimeService = {
    // "company" first: it puts the active company in user.context, which the
    // token route reads (request.env.company) to choose the organization.
    dependencies: ["company", "notification"],
    start(env, { notification }) {
        return startRealtime({
            fetchToken: () => rpc(TOKEN_ROUTE, { context: user.context }, { silent: true }),
            notification,
        });
    },
};

registry.category("services").add("crm_realtime", crmRealtimeService);
