// Names for people of the API's enum values.

import { PackageType, Protocol, SubtaskStatus, TaskStatus, TaskType } from "./gen/otafleet/v1/common_pb.js";

export const taskStatusName: Record<TaskStatus, string> = {
  [TaskStatus.UNSPECIFIED]: "unknown",
  [TaskStatus.WAITING]: "waiting",
  [TaskStatus.PROCESSING]: "processing",
  [TaskStatus.SUCCESS]: "success",
  [TaskStatus.FAIL]: "fail",
  [TaskStatus.PARTIAL_SUCCESS]: "partial success",
  [TaskStatus.STOPPING]: "stopping",
  [TaskStatus.STOPPED]: "stopped",
};

export const subtaskStatusName: Record<SubtaskStatus, string> = {
  [SubtaskStatus.UNSPECIFIED]: "unknown",
  [SubtaskStatus.WAITING]: "waiting",
  [SubtaskStatus.PROCESSING]: "processing",
  [SubtaskStatus.SUCCESS]: "success",
  [SubtaskStatus.FAIL]: "fail",
  [SubtaskStatus.FAIL_WAIT_RETRY]: "fail, retry due",
  [SubtaskStatus.STOPPED]: "stopped",
};

export const protocolName: Record<Protocol, string> = {
  [Protocol.UNSPECIFIED]: "unknown",
  [Protocol.MQTT]: "MQTT",
  [Protocol.LWM2M]: "LwM2M",
};

export const packageTypeName: Record<PackageType, string> = {
  [PackageType.UNSPECIFIED]: "unknown",
  [PackageType.FIRMWARE]: "firmware",
  [PackageType.SOFTWARE]: "software",
};

export const taskTypeName: Record<TaskType, string> = {
  [TaskType.UNSPECIFIED]: "unknown",
  [TaskType.FIRMWARE_UPGRADE]: "firmware upgrade",
  [TaskType.SOFTWARE_UPGRADE]: "software upgrade",
};

/** finished reports whether a task status is final. */
export function finished(s: TaskStatus): boolean {
  return s === TaskStatus.SUCCESS || s === TaskStatus.FAIL || s === TaskStatus.PARTIAL_SUCCESS || s === TaskStatus.STOPPED;
}

/** statusBadge is the CSS class of a status word. */
export function statusClass(name: string): string {
  return "badge s-" + name.replace(/[^a-z]+/g, "-");
}
