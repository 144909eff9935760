import type { AppserviceObserver } from "../bridge/appservice";
import type { MimiProvider, ProviderObserver } from "../provider/provider";
import type { HealthSource } from "./listener";
import type { MetricsSource, MimiMetrics } from "./metrics";

/** The provider's callbacks that bump `metrics`' counters (`ProviderOptions.observe`). */
export function providerObserver(metrics: MimiMetrics): ProviderObserver {
  return {
    eventAppended: (role) => metrics.eventSequenced(role),
    federationError: (errcode) => metrics.error("federation", errcode),
  };
}

/** What the scrape-time gauges read of a running provider: its queues, and each room's MLS epoch. */
export function providerMetricsSource(provider: MimiProvider): MetricsSource {
  return {
    queues: () => provider.queueBacklog(),
    mlsEpochs: () =>
      provider.rooms.listRooms().flatMap((roomId) => {
        const view = provider.mls.observerView(roomId);
        return view === undefined ? [] : [{ roomId, epoch: BigInt(view.epoch) }];
      }),
  };
}

/** What `/health` reports of a provider. */
export function providerHealth(provider: MimiProvider): HealthSource {
  return {
    serverName: provider.serverName,
    rooms: () => provider.rooms.listRooms().length,
    unavailableReason: () => provider.unavailableReason(),
  };
}

/** The appservice listener's callbacks (`AppserviceDeps.observe`): its transactions and error answers. */
export function appserviceObserver(metrics: MimiMetrics): Required<AppserviceObserver> {
  return {
    onTransaction: (outcome, events) => metrics.homeserverTransaction(outcome, events),
    onError: (errcode) => metrics.error("appservice", errcode),
    onUnmapped: (kind) => metrics.error("bridge", kind),
  };
}

/** The admin API's callback (`AdminDeps.onError`) for its error answers. */
export function adminErrorObserver(metrics: MimiMetrics): (errcode: string) => void {
  return (errcode) => metrics.error("admin", errcode);
}
